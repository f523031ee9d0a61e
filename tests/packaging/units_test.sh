#!/usr/bin/env bash
# The systemd units under packaging/systemd: `systemd-analyze security --offline=yes`
# exposure at most 2.0 and `systemd-analyze verify` silent. verify wants the ExecStart
# binaries and the man pages of Documentation=: a private mount namespace puts the built
# programs over /usr/sbin (a copy of it) and MANPATH points at man pages made with pandoc.
# Needs root for the mount namespace; skips (exit 77) without it.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(cd "${1:?usage: $0 BUILD_DIR}" && pwd)
UNITS=$SRC/packaging/systemd
FAILED=0
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

for unit in certfleet-agent certfleet-companion; do
  score=$(systemd-analyze security --offline=yes --no-pager "$UNITS/$unit.service" 2>/dev/null |
          sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  echo "figure: $unit.service exposure $score"
  if [ -z "$score" ] || ! awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }'; then
    echo "FAILED - $unit exposure '$score' above 2.0"; FAILED=1
  else
    echo "ok - $unit exposure $score <= 2.0"
  fi
done

if [ "$(id -u)" -ne 0 ] || ! command -v unshare >/dev/null || ! command -v pandoc >/dev/null; then
  echo "SKIPPED: systemd-analyze verify needs root (a mount namespace) and pandoc"
  exit $((FAILED ? 1 : 77))
fi
mkdir -p "$WORK/sbin" "$WORK/man/man8" "$WORK/units"
cp -a /usr/sbin/. "$WORK/sbin/"
cp "$BIN/agent/certfleet-agent" "$BIN/companion/certfleet-companion" "$WORK/sbin/"
for page in "$SRC"/docs/man/*.md; do
  name=$(basename "$page" .md)
  pandoc -s -t man "$page" -o "$WORK/man/man8/$name"
done
cp "$UNITS"/*.service "$WORK/units/"
out=$(MANPATH=$WORK/man unshare -m sh -c 'mount --bind "$1/sbin" /usr/sbin && cd "$1/units" &&
      systemd-analyze verify ./certfleet-agent.service ./certfleet-companion.service 2>&1' sh "$WORK" || true)
# mosquitto.service is only ordered after (After=), not required: its absence here is fine.
out=$(printf '%s\n' "$out" | grep -v '^$' || true)
if [ -n "$out" ]; then
  echo "FAILED - systemd-analyze verify printed:"; printf '%s\n' "$out" | sed 's/^/    /'; FAILED=1
else
  echo "ok - systemd-analyze verify is silent"
fi
exit $FAILED
