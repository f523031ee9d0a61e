#!/usr/bin/env bash
# Repacks the certfleet .deb files of SRC_DIR into DEST_DIR with version VERSION (the same
# files, a newer version): the upgrade test needs a newer package, and a second full
# package build would double the CI time.
# usage: bump_version.sh SRC_DIR DEST_DIR VERSION
set -euo pipefail
SRC=${1:?usage: $0 SRC_DIR DEST_DIR VERSION}
DEST=${2:?}
VERSION=${3:?}
mkdir -p "$DEST"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for deb in "$SRC"/certfleet-agent_*.deb "$SRC"/certfleet-companion_*.deb; do
  name=$(dpkg-deb -f "$deb" Package)
  arch=$(dpkg-deb -f "$deb" Architecture)
  rm -rf "$TMP/tree"
  dpkg-deb -R "$deb" "$TMP/tree"
  sed -i "s/^Version: .*/Version: $VERSION/" "$TMP/tree/DEBIAN/control"
  dpkg-deb --root-owner-group -Zxz -b "$TMP/tree" "$DEST/${name}_${VERSION}_${arch}.deb" >/dev/null
done
ls "$DEST"
