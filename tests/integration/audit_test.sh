#!/usr/bin/env bash
# Audits closing the loop on a real fleet: the companion (EST, MQTT, operator API), a real
# mosquitto with the certfleet plugin on both listeners, and a certfleet-agent daemon.
# An on-demand audit started over the API (rate-limited) finds the gateway's certificate
# expiring within the configured window, its ROTATE_DEVICE_CERTIFICATE mitigation creates
# a rotation request, and the agent rotates; a quarantine through the API reaches the
# broker (the thing's subscriptions get nothing) and EST (re-enrollment refused), and
# lifting it restores both. Every API response is checked against docs/openapi.json.
source "$(dirname "$0")/lib.sh"

cd "$WORK"
SRC=$(cd "$HERE/../.." && pwd)
PLUGIN=$BIN/companion/broker_plugin/certfleet_mosquitto_claim.so
fleet_init
cat >>"$CONFIG" <<TOML

[broker]
crl_file = "$WORK/broker/crl.pem"
quarantine_file = "$WORK/broker/quarantine.json"
pid_file = "$WORK/broker.pid"

[rotation]
sweep_interval = "1s"
grace = "0s"

[api]
enabled = true

[audit]
report_dir = "$WORK/reports"

[audit.checks.DEVICE_CERTIFICATE_EXPIRING_CHECK]
threshold = "400d"
mitigations = ["ROTATE_DEVICE_CERTIFICATE"]
TOML
ADMIN=$("$CTL" --config "$CONFIG" api-token create --name ops-admin --role admin 2>/dev/null)
READER=$("$CTL" --config "$CONFIG" api-token create --name ops-reader --role read-only 2>/dev/null)
printf '%s\n' "$ADMIN" >admin.token
printf '%s\n' "$READER" >reader.token

# fleet_start, with the operator API on an ephemeral port.
check "certfleetctl broker-config" "$CTL" --config "$CONFIG" broker-config --out "$WORK/broker" \
  --port "$THINGS_PORT" --claim-port "$CLAIM_PORT" --claim-plugin "$PLUGIN"
check "the quarantine list starts empty" grep -q '"things":\[\]' broker/quarantine.json
check "the things listener loads the plugin with the list" grep -q "plugin_opt_quarantine_file $WORK/broker/quarantine.json" broker/mosquitto.conf
start_broker "$WORK/broker"
echo "$BROKER_PID" >"$WORK/broker.pid"
wait_for_port "$THINGS_PORT" 20
"$COMPANION" serve --config "$CONFIG" --est-listen 127.0.0.1:0 --ready-file state/ready --api-listen 127.0.0.1:0 \
  --api-ready-file state/api-ready >>"$WORK/companion.log" 2>&1 &
COMPANION_PID=$!
PIDS+=("$COMPANION_PID")
wait_for_file state/ready 20
wait_for_file state/api-ready 20
COMPANION_ADDR=$(cat state/ready)
API=https://$(cat state/api-ready)
"$CTL" --config "$CONFIG" ca cert >root.pem

TOKEN=$("$CTL" --config "$CONFIG" token create --serial gw-001 2>/dev/null)
printf '%s\n' "$TOKEN" >token.txt
mkdir -p gw
write_agent_toml info "$THINGS_PORT" 10s >agent.toml
cat >>agent.toml <<TOML
[keystore]
dir = "$WORK/gw/keys"
[renewal]
retry_base = "1s"
retry_cap = "2s"
TOML
"$AGENT" run --config agent.toml >>"$WORK/agent.log" 2>&1 &
PIDS+=("$!")
state() { python3 -c "import json; print(json.load(open('$WORK/gw/state/state.json'))['$1'])" 2>/dev/null || true; }
wait_until() {  # wait_until SECONDS COMMAND...: polls with a deadline
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.1
  done
}
cert_id() { openssl x509 -in gw/identity.pem -outform DER | sha256sum | cut -d' ' -f1; }
key_of_slot() { echo "$WORK/gw/keys/$(state currentSlot).key.pem"; }
# The gateway's own retained status, read with its own identity: what a quarantine cuts.
status_on_broker() {
  mosquitto_sub --cafile root.pem --cert gw/identity.pem --key "$(key_of_slot)" -h 127.0.0.1 -p "$THINGS_PORT" \
    -i gw-001-spy -t certfleet/things/gw-001/status -C 1 -W 4
}
check "the agent enrolls and becomes active" wait_until 40 test "$(state state)" = active
check "the agent's status is retained on the broker" wait_until 20 status_on_broker
FIRST_CERT=$(cert_id)

# api METHOD PATH [curl args...]: the response is recorded for the OpenAPI check.
echo 0 >"$WORK/n"
last() { echo "$WORK/resp.$(cat "$WORK/n")"; }
api() {
  local method=$1 path=$2; shift 2
  local N status
  N=$(($(cat "$WORK/n") + 1))
  echo "$N" >"$WORK/n"
  status=$(curl -sS -o "$WORK/resp.$N" -w '%{http_code}' --cacert root.pem -X "$method" "$@" "$API$path" || true)
  { echo "$method $path $status"; cat "$WORK/resp.$N"; } >"$WORK/record.$N"
  echo "$status"
}
BEARER_A=(-H "Authorization: Bearer $ADMIN")
BEARER_R=(-H "Authorization: Bearer $READER")
json_of() { python3 -c "import json,sys; d=json.load(open('$1')); print(eval(sys.argv[1]))" "$2"; }

check_eq "a read-only token cannot start an audit" 403 "$(api POST /start-audit "${BEARER_R[@]}" -d '')"
check_eq "an unknown check is refused" 400 "$(api POST /start-audit "${BEARER_A[@]}" -d '{"targetCheckNames":["NOPE"]}')"
check_eq "POST /start-audit starts the audit" 202 \
  "$(api POST /start-audit "${BEARER_A[@]}" -d '{"targetCheckNames":["DEVICE_CERTIFICATE_EXPIRING_CHECK"]}')"
TASK=$(json_of "$(last)" "d['taskId']")
check_eq "a second start within 5 minutes is refused" 429 "$(api POST /start-audit "${BEARER_A[@]}" -d '')"
check "the 429 says when to retry" grep -q "retry after" "$(last)"
check "429 carries Retry-After" bash -c "curl -sS -D - -o /dev/null --cacert root.pem -d '' -H 'Authorization: Bearer $ADMIN' '$API/start-audit' | grep -qi '^retry-after: [0-9]'"
audit_done() {
  [ "$(api GET "/get-audit-status/$TASK" "${BEARER_R[@]}")" = 200 ] && grep -q '"taskStatus":"COMPLETED"' "$(last)"
}
check "the audit completes" wait_until 30 audit_done
check_eq "the expiring certificate is a finding" "$FIRST_CERT" \
  "$(json_of "$(last)" "d['findings'][0]['nonCompliantResource']['resourceIdentifier']['deviceCertificateId']")"
check_eq "its rotation mitigation succeeded" "ROTATE_DEVICE_CERTIFICATE SUCCEEDED" \
  "$(json_of "$(last)" "d['mitigationActions'][0]['actionName'] + ' ' + d['mitigationActions'][0]['status']")"
check_eq "the audit is listed" 200 "$(api GET "/list-audits?taskStatus=COMPLETED" "${BEARER_R[@]}")"
check "list-audits names the task" grep -q "$TASK" "$(last)"
check "the report file was written" test -s "reports/$TASK.json"
check_eq "an unknown task is 404" 404 "$(api GET "/get-audit-status/$(printf '0%.0s' {1..32})" "${BEARER_R[@]}")"

# The mitigation's rotation request reaches the agent, which rotates.
check "the agent rotates on the audit's request" wait_until 60 bash -c "[ \"\$(openssl x509 -in gw/identity.pem -outform DER | sha256sum | cut -d' ' -f1)\" != '$FIRST_CERT' ]"
check "the rotation request completes" wait_until 20 bash -c "'$CTL' --config '$CONFIG' rotations list --json | grep -q '\"state\": \"COMPLETED\"'"
check "the rotation was created by the audit" bash -c "'$CTL' --config '$CONFIG' rotations list --json | grep -q '\"createdBy\": \"audit\"'"
check "the agent is active with the new certificate" wait_until 30 test "$(state state)" = active
check "the broker accepts the new identity" wait_until 20 status_on_broker

# Quarantine through the API: the companion writes the list and reloads the broker.
R=("$CTL" --server "$API" --ca-file root.pem --token-file admin.token)
check "certfleetctl --server quarantine" "${R[@]}" quarantine gw-001 --reason "audit test"
check "the quarantine list names the thing" wait_until 20 grep -q '"gw-001"' broker/quarantine.json
check "the broker reloads the list" wait_until 20 grep -q "certfleet quarantine: reloaded .*: 1 quarantined" broker.log
# mosquitto_sub exits 0 when its subscription is refused: what counts is that nothing came.
check_eq "the quarantined thing's subscription gets nothing" "" "$(status_on_broker 2>/dev/null || true)"
check "the broker logs the denial" grep -q "denied .* to quarantined thing 'gw-001'" broker.log
make_csr ec gw-001 reenroll.csr.b64 reenroll.key
check_eq "EST refuses the quarantined thing's re-enrollment" 403 "$(http_status --cacert root.pem \
  --cert gw/identity.pem --key "$(key_of_slot)" -H 'Content-Type: application/pkcs10' --data-binary @reenroll.csr.b64 \
  "https://$COMPANION_ADDR/.well-known/est/simplereenroll")"
check_eq "the thing shows its quarantine" 200 "$(api GET /things/gw-001 "${BEARER_R[@]}")"
check_eq "quarantine reason" "audit test" "$(json_of "$(last)" "d['quarantineReason']")"
check_eq "the quarantine is a security event" 200 "$(api GET "/security-events?kind=thing_quarantined" "${BEARER_R[@]}")"
check "the event names the operator's token" grep -q "token:ops-admin" "$(last)"
check_eq "a read-only token cannot lift it" 403 "$(api POST /things/gw-001/unquarantine "${BEARER_R[@]}" -d '')"
check_eq "lifting it through the API" 200 "$(api POST /things/gw-001/unquarantine "${BEARER_A[@]}" -d '')"
check "the list is empty again" wait_until 20 grep -q '"things":\[\]' broker/quarantine.json
check "the broker delivers to the thing again" wait_until 20 status_on_broker

check_eq "audit metrics" 200 "$(api GET /metrics "${BEARER_R[@]}")"
check "certfleet_audit_runs_total counts the audit" grep -q 'certfleet_audit_runs_total{result="completed"} 1' "$(last)"
check "remote audit list" bash -c "'${R[0]}' --server '$API' --ca-file root.pem --token-file reader.token audit list | grep -q '$TASK'"
check "remote audit show" bash -c "'${R[0]}' --server '$API' --ca-file root.pem --token-file reader.token audit show '$TASK' | grep -q CERTIFICATE_APPROACHING_EXPIRATION"
check "remote audit suppress" "${R[@]}" audit suppress --check DEVICE_CERTIFICATE_EXPIRING_CHECK \
  --resource "$FIRST_CERT" --for 30d --description "audit test"
check_eq "the API lists the suppression" 200 "$(api GET /audit-suppressions "${BEARER_R[@]}")"
check "it names the certificate" grep -q "\"resourceId\":\"$FIRST_CERT\"" "$(last)"
check "it names who made it" grep -q '"createdBy":"api:token:ops-admin"' "$(last)"
check "remote audit suppressions" bash -c "'${R[0]}' --server '$API' --ca-file root.pem --token-file reader.token audit suppressions | grep -q '$FIRST_CERT'"
check "remote audit unsuppress" "${R[@]}" audit unsuppress --check DEVICE_CERTIFICATE_EXPIRING_CHECK --resource "$FIRST_CERT"
check_eq "unsuppressing twice is 404" 404 "$(api POST /audit-suppressions/delete "${BEARER_A[@]}" \
  -d "{\"checkName\":\"DEVICE_CERTIFICATE_EXPIRING_CHECK\",\"resourceId\":\"$FIRST_CERT\"}")"
check "responses match docs/openapi.json" python3 "$HERE/openapi_check.py" "$SRC/docs/openapi.json" "$WORK"/record.*
finish
