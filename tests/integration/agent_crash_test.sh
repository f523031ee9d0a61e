#!/usr/bin/env bash
# Crash safety, proven: the real daemon is killed (SIGKILL, via CERTFLEET_AGENT_FAILPOINT)
# at every failpoint of provisioning (EST and MQTT claim) and rotation, restarted, and must end with a working
# identity: the broker accepts the certificate file with its key, the companion's registry
# lists that certificate as the thing's ACTIVE one, and exactly one key slot certifies it.
# Then: companion killed mid-rotation, broker restarted mid-rotation, EST dropped and
# stalled by a loopback proxy. Prints "faults injected: N, recovered: N".
source "$(dirname "$0")/lib.sh"

cd "$WORK"
fleet_init
cat >>"$CONFIG" <<TOML

[rotation]
grace = "1s"
sweep_interval = "1s"
TOML
mkdir -p "$WORK/state/templates"
cat >"$WORK/state/templates/gateway.json" <<'JSON'
{
  "Parameters": {"SerialNumber": {"Type": "String"}},
  "Resources": {
    "thing": {
      "Type": "AWS::IoT::Thing",
      "Properties": {"ThingName": {"Fn::Join": ["", ["gw-", {"Ref": "SerialNumber"}]]}}
    }
  }
}
JSON
fleet_start
EST_PORT=${COMPANION_ADDR##*:}

# EST goes through the fault proxy; its mode file decides per connection.
echo pass >proxy.mode
python3 "$HERE/fault_proxy.py" proxy.port 127.0.0.1 "$EST_PORT" proxy.mode >>"$WORK/proxy.log" 2>&1 &
PIDS+=("$!")
wait_for_file proxy.port 20
PROXY_PORT=$(cat proxy.port)

THING=gw-crash-0
cat >agent.toml <<TOML
log_level = "info"
[agent]
state_dir = "$WORK/gw/state"
control_socket = "$WORK/gw/run/control.sock"
time_sync_file = ""
[est]
server = "https://127.0.0.1:$PROXY_PORT"
trust_anchor_file = "$WORK/root.pem"
client_cert_file = "$WORK/claim.pem"
client_key_slot = "claim"
timeout = "3s"
[identity]
common_name = "$THING"
cert_file = "$WORK/gw/identity.pem"
[keystore]
dir = "$WORK/gw/keys"
[mqtt]
host = "127.0.0.1"
port = $THINGS_PORT
timeout = "5s"
[renewal]
retry_base = "1s"
retry_cap = "1s"
TOML
"$AGENT" keys import --key-dir "$WORK/gw/keys" --slot claim --from claim.key >/dev/null

INJECTED=0
RECOVERED=0
OUTCOMES=()
AGENT_PID=
start_agent() {  # start_agent [FAILPOINT]
  if [ -n "${1:-}" ]; then
    CERTFLEET_AGENT_FAILPOINT=$1 "$AGENT" run --config agent.toml >>"$WORK/agent.log" 2>&1 &
  else
    "$AGENT" run --config agent.toml >>"$WORK/agent.log" 2>&1 &
  fi
  AGENT_PID=$!
  PIDS+=("$AGENT_PID")
}
stop_agent() { kill "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true; }
# wait_killed SECONDS: the agent died of SIGKILL (exit status 137).
wait_killed() {
  local deadline=$((SECONDS + $1)) rc=0
  while kill -0 "$AGENT_PID" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.05
  done
  wait "$AGENT_PID" 2>/dev/null || rc=$?
  [ "$rc" -eq 137 ]
}
state() { python3 -c "import json; print(json.load(open('$WORK/gw/state/state.json'))['$1'])" 2>/dev/null || true; }
cert_id() { openssl x509 -in gw/identity.pem -outform DER 2>/dev/null | sha256sum | cut -d' ' -f1; }
agent_status() { "$AGENT" status --json --config agent.toml 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin).get('$1',''))" 2>/dev/null || true; }
# wait_active_changed OLD_ID SECONDS: status says active and (unless OLD_ID is "") the cert changed.
wait_active_changed() {
  local deadline=$((SECONDS + $2))
  until [ "$(agent_status state)" = active ] && [ -s gw/identity.pem ] && { [ -z "$1" ] || [ "$(cert_id)" != "$1" ]; }; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.1
  done
}
# The slots whose key certifies the certificate file.
certifying_slots() {
  local f pub
  pub=$(openssl x509 -in gw/identity.pem -noout -pubkey 2>/dev/null)
  for f in gw/keys/identity-*.key.pem; do
    [ -e "$f" ] || continue
    [ "$(openssl pkey -in "$f" -pubout 2>/dev/null)" = "$pub" ] && basename "$f" .key.pem
  done
}
# identity_ok: (a) the broker accepts the certificate file + its key, (b) the registry
# lists it as the thing's ACTIVE certificate, (c) exactly one slot certifies it and at
# most one other (the reusable pending key) is left.
identity_ok() {
  local slots n id
  slots=$(certifying_slots)
  n=$(printf '%s' "$slots" | grep -c . || true)
  [ "$n" -eq 1 ] || { echo "certifying slots: '$slots'"; return 1; }
  [ "$(ls gw/keys | grep -c '^identity-')" -le 2 ] || { ls gw/keys; return 1; }
  id=$(cert_id)
  "$CTL" --config "$CONFIG" certs list --thing "$THING" --json >certs.json
  python3 - "$id" <<'PY' || return 1
import json, sys
certs = json.load(open("certs.json"))
mine = [c for c in certs if c["certificateId"] == sys.argv[1]]
assert mine and mine[0]["status"] == "ACTIVE", ("registry", sys.argv[1], certs)
PY
  mosquitto_pub --cafile root.pem --cert gw/identity.pem --key "gw/keys/$slots.key.pem" -h 127.0.0.1 \
    -p "$THINGS_PORT" -i "$THING-probe" -t "certfleet/things/$THING/status" -m '{"probe":true}' -q 1 >/dev/null 2>&1 ||
    { echo "broker refused the identity"; return 1; }
}
# fault NAME OUTCOME: counts one injected fault and whether it recovered.
fault() {
  INJECTED=$((INJECTED + 1))
  if [ "$2" = recovered ]; then RECOVERED=$((RECOVERED + 1)); pass "$1: recovered"
  else fail "$1: $2"; tail -6 "$WORK/agent.log" | sed 's/^/    agent: /'; fi
  OUTCOMES+=("$1=$2")
}

# ---- Provisioning: killed at each provisioning failpoint, then restarted. ----------
p=0
for fp in provision.journal-provisioning provision.enroll-key-generated provision.enroll-cert-received \
  provision.enroll-cert-file-written provision.journal-active; do
  stop_agent
  # A fresh gateway each time: the companion enrolls a thing by claim only once.
  p=$((p + 1))
  THING=gw-crash-$p
  sed -i "s/^common_name = .*/common_name = \"$THING\"/" agent.toml
  rm -rf gw/state gw/identity.pem gw/keys/identity-*
  start_agent "$fp"
  if ! wait_killed 20; then fault "$fp" "not killed"; continue; fi
  start_agent
  if wait_active_changed "" 30 && identity_ok >check.out 2>&1; then fault "$fp" recovered
  else fault "$fp" "no working identity: $(tr '\n' ' ' <check.out)"; fi
done

# ---- Claim provisioning over MQTT: killed at each claim failpoint, then restarted. ---
# The daemon provisions by claim when [provisioning] names a template; the thing is
# gw-<SerialNumber> (the template), so each round is a fresh gateway.
cp agent.toml agent-est.toml
for fp in $("$AGENT" failpoints | grep '^provision\.claim-'); do
  stop_agent
  p=$((p + 1))
  THING=gw-claim-$p
  rm -rf gw/state gw/identity.pem gw/keys/identity-* gw/provisioned.json
  { sed "s/^common_name = .*/common_name = \"$THING\"/" agent-est.toml
    cat <<TOML

[provisioning]
claim_port = $CLAIM_PORT
things_port = $THINGS_PORT
claim_cert_file = "$WORK/claim.pem"
template = "gateway"
client_id = "SN-claim-$p"
state_file = "$WORK/gw/provisioned.json"

[provisioning.parameters]
SerialNumber = "claim-$p"
TOML
  } >agent.toml
  start_agent "$fp"
  if ! wait_killed 20; then fault "$fp" "not killed"; continue; fi
  start_agent
  if wait_active_changed "" 30 && identity_ok >check.out 2>&1; then fault "$fp" recovered
  else fault "$fp" "no working identity: $(tr '\n' ' ' <check.out)"; fi
done

# ---- Rotation: killed at each rotation failpoint. -----------------------------------
# Before the certificate is issued the restart rolls back and retries: the outcome is a
# new certificate as well (the retry is the requested rotation, run after the backoff).
n=0
for fp in $("$AGENT" failpoints | grep '^rotate\.'); do
  n=$((n + 1))
  stop_agent
  start_agent "$fp"
  wait_active_changed "" 20 || true
  OLD=$(cert_id)
  if [ $n -eq 3 ]; then
    "$CTL" --config "$CONFIG" rotate "$THING" --reason crash-test >/dev/null 2>&1 || true
  else
    "$AGENT" renew --now --config agent.toml >/dev/null 2>&1 &
  fi
  if ! wait_killed 30; then fault "$fp" "not killed"; continue; fi
  start_agent
  if wait_active_changed "$OLD" 40 && identity_ok >check.out 2>&1; then fault "$fp" recovered
  else fault "$fp" "no working identity (state $(agent_status state)): $(tr '\n' ' ' <check.out)"; fi
done
stop_agent
start_agent
wait_active_changed "" 20 || true

# ---- Companion killed mid-rotation (frozen, then SIGKILL, then restarted). ----------
OLD=$(cert_id)
kill -STOP "$COMPANION_PID"
"$AGENT" renew --now --config agent.toml >/dev/null 2>&1 &
sleep 0.5
kill -9 "$COMPANION_PID"; wait "$COMPANION_PID" 2>/dev/null || true
identity_ok >/dev/null 2>&1 || true
# Back on the same port (the proxy forwards there).
rm -f state/ready
"$COMPANION" serve --config "$CONFIG" --est-listen "127.0.0.1:$EST_PORT" --ready-file state/ready >>"$WORK/companion.log" 2>&1 &
COMPANION_PID=$!
PIDS+=("$COMPANION_PID")
wait_for_file state/ready 20
if wait_active_changed "$OLD" 40 && identity_ok >check.out 2>&1; then fault companion-killed recovered
else fault companion-killed "no working identity: $(tr '\n' ' ' <check.out)"; fi

# ---- Broker killed and restarted mid-rotation. --------------------------------------
OLD=$(cert_id)
kill -STOP "$COMPANION_PID"
"$AGENT" renew --now --config agent.toml >/dev/null 2>&1 &
sleep 0.5
kill -9 "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true
kill -CONT "$COMPANION_PID"
start_broker "$WORK/broker"
wait_for_port "$THINGS_PORT" 20
if wait_active_changed "$OLD" 40 && identity_ok >check.out 2>&1; then fault broker-restarted recovered
else fault broker-restarted "no working identity: $(tr '\n' ' ' <check.out)"; fi

# ---- EST network cut: the proxy drops, then stalls; the rotation fails and the old
# identity keeps working; back to pass, the rotation completes. ----------------------
for mode in drop stall; do
  OLD=$(cert_id)
  echo "$mode" >proxy.mode
  rc=0
  "$AGENT" renew --now --config agent.toml >renew.out 2>&1 || rc=$?
  ok=yes
  [ $rc -ne 0 ] || ok="renew succeeded through $mode"
  [ "$(cert_id)" = "$OLD" ] || ok="certificate changed"
  identity_ok >check.out 2>&1 || ok="old identity broken: $(tr '\n' ' ' <check.out)"
  echo pass >proxy.mode
  if [ "$ok" = yes ] && wait_active_changed "$OLD" 40 && identity_ok >check.out 2>&1; then fault "est-$mode" recovered
  else fault "est-$mode" "${ok/yes/no rotation after pass}"; fi
done
stop_agent

echo "faults injected: $INJECTED, recovered: $RECOVERED"
printf '  %s\n' "${OUTCOMES[@]}"
finish
