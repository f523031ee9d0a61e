#!/usr/bin/env bash
# Fleet provisioning over a real mosquitto broker: the companion's provisioning service
# answered by mosquitto_rr as an independent MQTT client, the broker ACL confining claim
# and thing identities, and the registry agreeing with what was handed out.
source "$(dirname "$0")/lib.sh"

cd "$WORK"
fleet_init
cat >>"$CONFIG" <<TOML

[hooks.pre_provision]
command = ["$HERE/../../packaging/hooks/allow-list-hook", "$WORK/serials.txt"]
TOML
printf 'SN-0001\nSN-0002\nSN-0003\nSN-0004\n' >serials.txt
mkdir -p state/templates
cat >state/templates/gateway.json <<'JSON'
{
  "Parameters": {
    "SerialNumber": {"Type": "String"},
    "Model": {"Type": "String", "Default": "gw-100"},
    "AWS::IoT::Certificate::Id": {"Type": "String"}
  },
  "Resources": {
    "thing": {
      "Type": "AWS::IoT::Thing",
      "Properties": {
        "ThingName": {"Fn::Join": ["", ["gw-", {"Ref": "SerialNumber"}]]},
        "AttributePayload": {"model": {"Ref": "Model"}},
        "ThingGroups": ["gateways"]
      }
    },
    "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
    "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "gateway"}}
  },
  "DeviceConfiguration": {"telemetryInterval": "60", "model": {"Ref": "Model"}}
}
JSON
fleet_start
check "claim ACL uses the certificate CN and the client id" grep -q 'pattern read certfleet/provisioning/%u/%c/#' broker/claim.acl
# The companion has subscribed once its connection shows in the broker log.
deadline=$((SECONDS + 20))
until grep -q "as certfleet-companion" broker.log; do [ $SECONDS -lt $deadline ] || break; sleep 0.05; done
sleep 0.2

CLAIM="--cafile root.pem --cert claim.pem --key claim.key -h 127.0.0.1 -p $CLAIM_PORT"
base() { echo "certfleet/provisioning/claim-batch-7/$1"; }
# rr CLIENT_ID TOPIC_SUFFIX REPLY PAYLOAD: one request and its reply on one connection.
rr() {
  # shellcheck disable=SC2086
  mosquitto_rr $CLAIM -V 311 -i "$1" -t "$(base "$1")/$2" -e "$(base "$1")/$2/$3" -m "$4" -W 10
}
csr_json() {
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$2" -subj "/CN=$1" 2>/dev/null |
    python3 -c 'import json,sys; print(json.dumps({"certificateSigningRequest": sys.stdin.read()}))'
}
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

# CreateCertificateFromCsr then RegisterThing.
csr_json gw-SN-0001 dev1.key >dev1.csr.json
check "CreateCertificateFromCsr accepted" bash -c "$(declare -f rr base); CLAIM='$CLAIM'; rr dev-1 certificates/create-from-csr/json accepted \"\$(cat dev1.csr.json)\" >create1.json"
field certificatePem <create1.json >dev1.pem
TOKEN1=$(field certificateOwnershipToken <create1.json)
check "the certificate chains to the companion root" openssl verify -CAfile root.pem -untrusted state/ca/issuing.pem dev1.pem
check_eq "certificateId is the SHA-256 of the DER" "$(openssl x509 -in dev1.pem -outform DER | sha256sum | cut -d' ' -f1)" "$(field certificateId <create1.json)"
check_eq "the pending certificate is not listed as a thing's yet" 0 "$("$CTL" --config "$CONFIG" certs list --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')"
REG1=$(python3 -c "import json; print(json.dumps({'certificateOwnershipToken': '$TOKEN1', 'parameters': {'SerialNumber': 'SN-0001'}}))")
check "RegisterThing accepted" bash -c "$(declare -f rr base); CLAIM='$CLAIM'; rr dev-1 provisioning-templates/gateway/provision/json accepted '$REG1' >reg1.json"
check_eq "thingName from the template" gw-SN-0001 "$(field thingName <reg1.json)"
check_eq "deviceConfiguration from the template" 60 "$(python3 -c "import json; print(json.load(open('reg1.json'))['deviceConfiguration']['telemetryInterval'])")"
check_eq "the registry holds the thing with its certificate" "$(field certificateId <create1.json)" \
  "$("$CTL" --config "$CONFIG" things list --json | python3 -c 'import json,sys; print([t.get("certificateId") for t in json.load(sys.stdin) if t["thingName"]=="gw-SN-0001"][0])')"

# Security cases: each rejected, nothing stored.
check "an ownership token used twice is rejected" bash -c "$(declare -f rr base); CLAIM='$CLAIM'; rr dev-1 provisioning-templates/gateway/provision/json rejected '$REG1' | grep -q InvalidCertificateOwnershipToken"
csr_json gw-SN-0002 dev2.key >dev2.csr.json
bash -c "$(declare -f rr base); CLAIM='$CLAIM'; rr dev-2 certificates/create-from-csr/json accepted \"\$(cat dev2.csr.json)\"" >create2.json
TOKEN2=$(field certificateOwnershipToken <create2.json)
REG2_OTHER=$(python3 -c "import json; print(json.dumps({'certificateOwnershipToken': '$TOKEN2', 'parameters': {'SerialNumber': 'SN-0002'}}))")
check "an ownership token used by another client is rejected" bash -c "$(declare -f rr base); CLAIM='$CLAIM'; rr dev-3 provisioning-templates/gateway/provision/json rejected '$REG2_OTHER' | grep -q 'another client'"
REG2_CN=$(python3 -c "import json; print(json.dumps({'certificateOwnershipToken': '$TOKEN2', 'parameters': {'SerialNumber': 'SN-0003'}}))")
check "a CSR whose CN differs from the template's thing name is rejected" bash -c "$(declare -f rr base); CLAIM='$CLAIM'; rr dev-2 provisioning-templates/gateway/provision/json rejected '$REG2_CN' | grep -q 'differs from the thing name'"
csr_json gw-SN-0009 dev9.key >dev9.csr.json
bash -c "$(declare -f rr base); CLAIM='$CLAIM'; rr dev-9 certificates/create-from-csr/json accepted \"\$(cat dev9.csr.json)\"" >create9.json
REG9=$(python3 -c "import json; print(json.dumps({'certificateOwnershipToken': '$(field certificateOwnershipToken <create9.json)', 'parameters': {'SerialNumber': 'SN-0009'}}))")
check "the pre-provisioning hook denies a serial not on the list" bash -c "$(declare -f rr base); CLAIM='$CLAIM'; rr dev-9 provisioning-templates/gateway/provision/json rejected '$REG9' | grep -q AccessDenied"
csr_json gw-SN-0001 dev1b.key >dev1b.csr.json
bash -c "$(declare -f rr base); CLAIM='$CLAIM'; rr dev-1b certificates/create-from-csr/json accepted \"\$(cat dev1b.csr.json)\"" >create1b.json
REG1B=$(python3 -c "import json; print(json.dumps({'certificateOwnershipToken': '$(field certificateOwnershipToken <create1b.json)', 'parameters': {'SerialNumber': 'SN-0001'}}))")
check "RegisterThing for an already provisioned thing is rejected" bash -c "$(declare -f rr base); CLAIM='$CLAIM'; rr dev-1b provisioning-templates/gateway/provision/json rejected '$REG1B' | grep -q ThingAlreadyProvisioned"
check "CreateKeysAndCertificate is off by default" bash -c "$(declare -f rr base); CLAIM='$CLAIM'; rr dev-4 certificates/create/json rejected '{}' | grep -q CreateKeysAndCertificateNotAllowed"
check "garbage payload is rejected" bash -c "$(declare -f rr base); CLAIM='$CLAIM'; rr dev-4 certificates/create-from-csr/json rejected 'not json' | grep -q InvalidPayload"
check "unknown template is rejected" bash -c "$(declare -f rr base); CLAIM='$CLAIM'; rr dev-1 provisioning-templates/nope/provision/json rejected '$REG1' | grep -q TemplateNotFound"
check_eq "rejections are recorded as security events" yes "$(sqlite3 state/registry.sqlite3 "SELECT CASE WHEN COUNT(*) >= 7 THEN 'yes' ELSE 'no' END FROM security_events" 2>/dev/null || echo no-sqlite3)"
check_eq "nothing of the rejected requests became a certificate" 1 "$("$CTL" --config "$CONFIG" certs list --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')"

# The broker ACL: a claimant cannot read another client's replies.
# shellcheck disable=SC2086
mosquitto_sub $CLAIM -V 311 -i spy -t "$(base dev-5)/#" -t "$(base spy)/#" -C 1 -W 4 >spy.out 2>&1 &
SPY=$!
sleep 0.5
csr_json gw-SN-0004 dev5.key >dev5.csr.json
bash -c "$(declare -f rr base); CLAIM='$CLAIM'; rr dev-5 certificates/create-from-csr/json accepted \"\$(cat dev5.csr.json)\"" >create5.json
wait $SPY || true
check "a claim identity cannot read another client's replies" bash -c "! grep -q certificatePem spy.out"
check "and the victim got its reply" grep -q certificatePem create5.json
# shellcheck disable=SC2086
check_fails "a claim identity cannot connect to the things listener" mosquitto_pub --cafile root.pem --cert claim.pem --key claim.key -h 127.0.0.1 -p "$THINGS_PORT" -V 311 -i x -t certfleet/things/gw-SN-0001/status -m x
# A thing reaches its own topics, not another thing's.
THING="--cafile root.pem --cert dev1.pem --key dev1.key -h 127.0.0.1 -p $THINGS_PORT -V 311"
# shellcheck disable=SC2086
mosquitto_sub $THING -i gw-SN-0001 -t certfleet/things/gw-SN-0001/# -C 1 -W 5 >own.out 2>&1 &
OWN=$!
sleep 0.5
# shellcheck disable=SC2086
check "a thing publishes on its own topic" mosquitto_pub $THING -i gw-SN-0001-pub -t certfleet/things/gw-SN-0001/status -m online -q 1
wait $OWN || true
check "and receives on its own topic" grep -qx online own.out
# shellcheck disable=SC2086
mosquitto_sub $THING -i gw-SN-0001 -t certfleet/things/gw-SN-0002/# -C 1 -W 3 >other.out 2>&1 &
OTHER=$!
sleep 0.5
# shellcheck disable=SC2086
mosquitto_pub --cafile root.pem --cert state/tls/mqtt-client.pem -h 127.0.0.1 -p "$THINGS_PORT" -V 311 -i certfleet-probe \
  --key state/keys/mqtt-client.key.pem -t certfleet/things/gw-SN-0002/cmd -m secret -q 1 || true
wait $OTHER || true
check "a thing cannot read another thing's topics" bash -c "! grep -q secret other.out"
# shellcheck disable=SC2086
mosquitto_sub $THING -i gw-SN-0001 -t certfleet/things/gw-SN-0001/# -C 1 -W 3 >forged.out 2>&1 &
FORGED=$!
sleep 0.5
# shellcheck disable=SC2086
mosquitto_pub $CLAIM -V 311 -i dev-6 -t certfleet/things/gw-SN-0001/cmd -m forged -q 1 || true
wait $FORGED || true
check "a claim identity cannot publish to a thing's topics" bash -c "! grep -q forged forged.out"

# certfleet-agent provision: the whole flow from the gateway's side, with the claim key in
# the hal key store, against the real companion and broker.
"$AGENT" keys import --key-dir "$WORK/gw/keys" --slot claim --from claim.key >/dev/null
cat >agent.toml <<TOML
[est]
trust_anchor_file = "$WORK/root.pem"

[identity]
common_name = "gw-SN-0003"
cert_file = "$WORK/gw/identity.pem"

[keystore]
backend = "file"
dir = "$WORK/gw/keys"

[provisioning]
broker_host = "127.0.0.1"
claim_port = $CLAIM_PORT
things_port = $THINGS_PORT
claim_cert_file = "$WORK/claim.pem"
template = "gateway"
client_id = "SN-0003"
state_file = "$WORK/gw/provisioned.json"
timeout = "10s"
max_attempts = 2

[provisioning.parameters]
SerialNumber = "SN-0003"
Model = "gw-200"
TOML
check "certfleet-agent provision" "$AGENT" provision --config agent.toml
check "the identity chains to the companion root" openssl verify -CAfile root.pem -untrusted state/ca/issuing.pem gw/identity.pem
check_eq "state file: thing name" gw-SN-0003 "$(field thingName <gw/provisioned.json)"
check_eq "state file mode" 600 "$(stat -c %a gw/provisioned.json)"
check_eq "claim key and identity key in separate slots" "claim identity-a" "$("$AGENT" keys list --key-dir "$WORK/gw/keys" | xargs)"
check_eq "the registry's current certificate for the thing is the agent's" \
  "$(openssl x509 -in gw/identity.pem -outform DER | sha256sum | cut -d' ' -f1)" \
  "$("$CTL" --config "$CONFIG" things list --json | python3 -c 'import json,sys; print([t.get("certificateId") for t in json.load(sys.stdin) if t["thingName"]=="gw-SN-0003"][0])')"
# The agent proved the identity by publishing its retained status with it.
# shellcheck disable=SC2086
mosquitto_sub --cafile root.pem --cert gw/identity.pem --key gw/keys/identity-a.key.pem -h 127.0.0.1 -p "$THINGS_PORT" \
  -V 311 -i gw-SN-0003-check -t certfleet/things/gw-SN-0003/status -C 1 -W 5 >status.out 2>&1 || true
check "the retained status was published with the new identity" grep -q provisioned status.out
check_fails "provisioning twice is refused" "$AGENT" provision --config agent.toml
check "the refusal says so" grep -qi "already provisioned" "$WORK/last.out"
sed -i 's/^SerialNumber = "SN-0003"/SerialNumber = "SN-0099"/; s/gw-SN-0003/gw-SN-0099/; s/identity.pem/identity99.pem/; s/provisioned.json/provisioned99.json/' agent.toml
check_fails "a serial the hook does not allow is refused at once" "$AGENT" provision --config agent.toml
check "the error carries the rejection" grep -q "AccessDenied" "$WORK/last.out"
check "nothing was written for the refused gateway" test ! -e gw/identity99.pem

stop_companion
stop_broker
finish
