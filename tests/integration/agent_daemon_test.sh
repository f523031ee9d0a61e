#!/usr/bin/env bash
# certfleet-agent run against the real companion (EST) and a real mosquitto: the daemon
# enrolls, connects with its identity, publishes its retained status, rotates on
# `renew --now` (new key in the other slot, old key deleted, the broker accepts the new
# certificate), and recovers from kill -9 in the middle of a rotation.
source "$(dirname "$0")/lib.sh"

cd "$WORK"
fleet_init
fleet_start
TOKEN=$("$CTL" --config "$CONFIG" token create --serial gw-001 2>/dev/null)
printf '%s\n' "$TOKEN" >token.txt

mkdir -p gw hooks exports
cat >hooks/record <<'SH'
#!/bin/sh
echo "$CERTFLEET_THING_NAME $CERTFLEET_CERTIFICATE_ID" >>"$1"
SH
chmod 755 hooks/record
write_agent_toml debug "$THINGS_PORT" 10s >agent.toml
cat >>agent.toml <<TOML
[keystore]
dir = "$WORK/gw/keys"
[renewal]
retry_base = "1s"
retry_cap = "2s"
[[hooks.post_rotation]]
command = ["$WORK/hooks/record", "$WORK/hooks.out"]
timeout = "10s"
[[export]]
path = "$WORK/exports/chain.pem"
what = "chain"
mode = "0640"
TOML

start_agent() {
  "$AGENT" run --config agent.toml >>"$WORK/agent.log" 2>&1 &
  AGENT_PID=$!
  PIDS+=("$AGENT_PID")
}
state() { python3 -c "import json; print(json.load(open('$WORK/gw/state/state.json'))['$1'])" 2>/dev/null || true; }
wait_state() {  # wait_state FIELD VALUE SECONDS
  local deadline=$((SECONDS + $3))
  until [ "$(state "$1")" = "$2" ]; do
    [ $SECONDS -lt $deadline ] || { echo "timed out waiting for $1=$2 (is $(state "$1"))" >&2; return 1; }
    sleep 0.05
  done
}
key_of_slot() { echo "$WORK/gw/keys/$(state currentSlot).key.pem"; }
status_on_broker() {
  mosquitto_sub --cafile root.pem --cert gw/identity.pem --key "$(key_of_slot)" -h 127.0.0.1 -p "$THINGS_PORT" \
    -i gw-001-spy -t certfleet/things/gw-001/status -C 1 -W 5
}
cert_id() { openssl x509 -in gw/identity.pem -outform DER | sha256sum | cut -d' ' -f1; }

start_agent
check "the daemon enrolls and becomes active" wait_state state active 30
check "the control socket exists" test -S "$WORK/gw/run/control.sock"
check "control socket mode" test "$(stat -c %a gw/run/control.sock)" = 600
check "journal mode" test "$(stat -c %a gw/state/state.json)" = 600
deadline=$((SECONDS + 20))
until status_on_broker >status1.json 2>/dev/null && grep -q '"state":"active"' status1.json; do
  [ $SECONDS -lt $deadline ] || break
  sleep 0.2
done
check "retained status on the broker, state active" grep -q '"state":"active"' status1.json
check "status names the current certificate" grep -q "\"certificateId\":\"$(cert_id)\"" status1.json
check "status CLI" "$AGENT" status --config agent.toml
check "status --json is JSON with the thing" bash -c "'$AGENT' status --json --config agent.toml | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d[\"thingName\"]==\"gw-001\" and d[\"nextRenewal\"]'"

FIRST=$(cert_id)
FIRST_SLOT=$(state currentSlot)
check "renew --now rotates" "$AGENT" renew --now --config agent.toml
SECOND=$(cert_id)
check "the certificate changed" test "$FIRST" != "$SECOND"
check "the key slot flipped" test "$(state currentSlot)" != "$FIRST_SLOT"
check "the old key is deleted" test ! -e "$WORK/gw/keys/$FIRST_SLOT.key.pem"
check "the new certificate matches the new key" bash -c "[ \"\$(openssl x509 -in gw/identity.pem -noout -pubkey)\" = \"\$(openssl pkey -in '$(key_of_slot)' -pubout)\" ]"
check "the new certificate chains to the root" openssl verify -CAfile root.pem -untrusted state/ca/issuing.pem gw/identity.pem
check "the post-rotation hook ran with the new identity" grep -q "gw-001 $SECOND" hooks.out
check "the chain was exported" grep -q BEGIN exports/chain.pem
check "export mode" test "$(stat -c %a exports/chain.pem)" = 640
deadline=$((SECONDS + 20))
until status_on_broker >status2.json 2>/dev/null && grep -q "$SECOND" status2.json; do
  [ $SECONDS -lt $deadline ] || break
  sleep 0.2
done
check "the broker accepts the new certificate; status updated" grep -q "\"certificateId\":\"$SECOND\"" status2.json
check "status has lastRotation" bash -c "! grep -q '\"lastRotation\":\"\"' status2.json"

# kill -9 in the middle of a rotation: the EST server is frozen, so the daemon sits in
# "rotating" with its new key generated; after the restart it rolls back and retries.
kill -STOP "$COMPANION_PID"
"$AGENT" renew --now --config agent.toml >renew2.out 2>&1 &
RENEW_PID=$!
check "the daemon is rotating" wait_state state rotating 20
kill -9 "$AGENT_PID"
wait "$AGENT_PID" 2>/dev/null || true
wait "$RENEW_PID" 2>/dev/null || true
kill -CONT "$COMPANION_PID"
check "after kill -9 the old identity is intact" test "$(cert_id)" = "$SECOND"
check "the certificate still matches a key on disk" bash -c "[ \"\$(openssl x509 -in gw/identity.pem -noout -pubkey)\" = \"\$(openssl pkey -in '$(key_of_slot)' -pubout)\" ]"
start_agent
check "the restarted daemon finishes a rotation" bash -c "deadline=\$((SECONDS + 40)); until [ \"\$(openssl x509 -in gw/identity.pem -outform DER | sha256sum | cut -d' ' -f1)\" != '$SECOND' ] && [ \"\$(python3 -c \"import json; print(json.load(open('gw/state/state.json'))['state'])\")\" = active ]; do [ \$SECONDS -lt \$deadline ] || exit 1; sleep 0.1; done"
check "one key left in the store" test "$(ls gw/keys | wc -l)" = 1
check "the certificate matches the remaining key" bash -c "[ \"\$(openssl x509 -in gw/identity.pem -noout -pubkey)\" = \"\$(openssl pkey -in '$(key_of_slot)' -pubout)\" ]"
kill "$AGENT_PID"
wait "$AGENT_PID" 2>/dev/null || true
finish
