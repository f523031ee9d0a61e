#!/usr/bin/env bash
# The companion's rotation coordinator against a real mosquitto: certfleetctl rotate ->
# retained request seen by the thing; the thing re-enrolls over EST and acks with its new
# certificate (signed with openssl, as the agent would) -> the request is cleared and
# COMPLETED; after the grace the old certificate is REVOKED, listed in the CRL, and the
# broker (reloaded by the configured command) refuses it while the new one connects.
source "$(dirname "$0")/lib.sh"

cd "$WORK"
fleet_init
# The reload command: SIGHUP to the test broker (mosquitto re-reads its CRL).
cat >reload-broker <<SH
#!/bin/sh
kill -HUP "\$(cat $WORK/broker.pid)"
SH
chmod 0755 reload-broker
cat >>"$CONFIG" <<TOML

[rotation]
grace = "2s"
sweep_interval = "1s"

[broker]
crl_file = "$WORK/broker/crl.pem"
reload_command = ["$WORK/reload-broker"]
TOML
fleet_start
check "the things ACL makes the rotation request read-only" grep -qx 'pattern read certfleet/things/%u/rotation/request' broker/things.acl
SERVER=https://$COMPANION_ADDR

# gw-1 gets its first certificate with a one-time token.
"$CTL" --config "$CONFIG" token create --serial gw-1 2>/dev/null >token.txt
check "gw-1 enrolls" "$AGENT" est enroll --server "$SERVER" --trust-anchor root.pem --common-name gw-1 \
  --key-dir "$WORK/keys" --user gw-1 --password-file token.txt --out "$WORK/old.pem"
cp keys/identity-a.key.pem old.key
OLD_ID=$(openssl x509 -in old.pem -outform DER | sha256sum | cut -d' ' -f1)
OLD="--cafile root.pem --cert old.pem --key old.key -h 127.0.0.1 -p $THINGS_PORT -V 311"

check_fails "rotate an unknown thing fails" "$CTL" --config "$CONFIG" rotate gw-nope
check "certfleetctl rotate --expiring-within --dry-run" bash -c "'$CTL' --config '$CONFIG' rotate --expiring-within 365d --dry-run | grep -qx 'would rotate gw-1'"
check_eq "a dry run stores nothing" 0 "$("$CTL" --config "$CONFIG" rotations list --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')"
check "certfleetctl rotate gw-1" bash -c "'$CTL' --config '$CONFIG' rotate gw-1 --reason test >rotate.out"
RID=$(awk '{print $2}' rotate.out)
check_fails "a second request for gw-1 is refused" "$CTL" --config "$CONFIG" rotate gw-1
check "the selector skips a thing with a pending request" bash -c "'$CTL' --config '$CONFIG' rotate --expiring-within 365d | grep -q 'skipped gw-1'"

# The thing sees the retained request (published within the sweep interval).
# shellcheck disable=SC2086
check "the thing receives the retained request" bash -c "mosquitto_sub $OLD -i gw-1-sub -t certfleet/things/gw-1/rotation/request -C 1 -W 15 >request.json"
check_eq "the request carries the rotation id" "$RID" "$(python3 -c 'import json; print(json.load(open("request.json"))["rotationId"])')"
check_eq "the request is marked published" yes "$("$CTL" --config "$CONFIG" rotations list --json | python3 -c 'import json,sys; print("yes" if "publishedAt" in json.load(sys.stdin)[0] else "no")')"
# The thing cannot clear its own request (delivery, not SUBACK, is what the ACL decides).
# shellcheck disable=SC2086
mosquitto_pub $OLD -i gw-1-pub -t certfleet/things/gw-1/rotation/request -r -n -q 1 || true
# shellcheck disable=SC2086
check "the request survives the thing's attempt to clear it" bash -c "mosquitto_sub $OLD -i gw-1-sub -t certfleet/things/gw-1/rotation/request -C 1 -W 5 | grep -q '$RID'"

# The agent's side: re-enroll with a new key, then ack with the new certificate.
check "gw-1 re-enrolls with a new key" "$AGENT" est reenroll --server "$SERVER" --trust-anchor root.pem \
  --cert "$WORK/old.pem" --key-dir "$WORK/keys" --out "$WORK/new.pem"
cp keys/identity-b.key.pem new.key
NEW_ID=$(openssl x509 -in new.pem -outform DER | sha256sum | cut -d' ' -f1)
NEW="--cafile root.pem --cert new.pem --key new.key -h 127.0.0.1 -p $THINGS_PORT -V 311"
# ack JSON signed over RotationAckSignedText: label, then one field per line.
make_ack() {  # make_ack KEYFILE OUT
  local at
  at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  printf 'certfleet rotation ack v1\ngw-1\n%s\n%s\n%s\n%s\n' "$RID" "$NEW_ID" "$OLD_ID" "$at" >signed.txt
  openssl dgst -sha256 -sign "$1" -out sig.bin signed.txt
  python3 -c "import base64,json,sys; print(json.dumps({'certificateId':'$NEW_ID','previousCertificateId':'$OLD_ID','rotationId':'$RID','signature':base64.b64encode(open('sig.bin','rb').read()).decode(),'signedAt':'$at','thingName':'gw-1'}, sort_keys=True, separators=(',',':')))" >"$2"
}
make_ack old.key forged-ack.json
# shellcheck disable=SC2086
mosquitto_pub $NEW -i gw-1-ack -t certfleet/things/gw-1/rotation/ack -f forged-ack.json -q 1
make_ack new.key ack.json
# shellcheck disable=SC2086
check "the thing publishes its ack with the new certificate" mosquitto_pub $NEW -i gw-1-ack -t certfleet/things/gw-1/rotation/ack -f ack.json -q 1

state_of_rotation() { "$CTL" --config "$CONFIG" rotations list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["state"])'; }
deadline=$((SECONDS + 15))
until [ "$(state_of_rotation)" = COMPLETED ] || [ $SECONDS -ge $deadline ]; do sleep 0.1; done
check_eq "the rotation is COMPLETED" COMPLETED "$(state_of_rotation)"
check_eq "an ack signed with the old key was a security event" 1 "$(sqlite3 state/registry.sqlite3 "SELECT COUNT(*) FROM security_events WHERE kind = 'rotation_ack_rejected'" 2>/dev/null || echo no-sqlite3)"
# shellcheck disable=SC2086
mosquitto_sub $NEW -i gw-1-sub -t certfleet/things/gw-1/rotation/request -C 1 -W 3 >cleared.out 2>/dev/null || true
check_eq "the retained request is cleared" "" "$(cat cleared.out)"

cert_status() { "$CTL" --config "$CONFIG" certs list --json | python3 -c "import json,sys; print([c['status'] for c in json.load(sys.stdin) if c['certificateId']=='$1'][0])"; }
deadline=$((SECONDS + 20))
until [ "$(cert_status "$OLD_ID")" = REVOKED ] || [ $SECONDS -ge $deadline ]; do sleep 0.2; done
check_eq "after the grace the old certificate is REVOKED" REVOKED "$(cert_status "$OLD_ID")"
check_eq "the new certificate stays ACTIVE" ACTIVE "$(cert_status "$NEW_ID")"
OLD_SERIAL=$(openssl x509 -in old.pem -noout -serial | cut -d= -f2)
deadline=$((SECONDS + 10))
until openssl crl -in broker/crl.pem -noout -text 2>/dev/null | grep -q "$OLD_SERIAL" || [ $SECONDS -ge $deadline ]; do sleep 0.2; done
check "the CRL lists the old certificate" bash -c "openssl crl -in broker/crl.pem -noout -text | grep -q '$OLD_SERIAL'"
# Once at start (first CRL), once after the revocation.
deadline=$((SECONDS + 10))
until [ "$(grep -c 'Reloading config' broker.log || true)" -ge 2 ] || [ $SECONDS -ge $deadline ]; do sleep 0.1; done
check "the broker was reloaded after the revocation" test "$(grep -c 'Reloading config' broker.log || true)" -ge 2
deadline=$((SECONDS + 10))
# shellcheck disable=SC2086
while mosquitto_pub $OLD -i gw-1-old -t certfleet/things/gw-1/status -m old -q 1 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
# shellcheck disable=SC2086
check_fails "the broker refuses the old certificate" mosquitto_pub $OLD -i gw-1-old -t certfleet/things/gw-1/status -m old -q 1
# shellcheck disable=SC2086
check "the new certificate connects" mosquitto_pub $NEW -i gw-1-new -t certfleet/things/gw-1/status -m new -q 1
check "the companion logged the transitions" grep -q "certificate revoked" companion.log

finish
