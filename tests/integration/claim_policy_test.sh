#!/usr/bin/env bash
# Claim rules enforced at the broker: a real mosquitto with the configuration
# certfleetctl broker-config writes from [[claims]] and the certfleet claim-policy plugin
# from this build, the real companion answering, and mosquitto_pub/_sub/_rr as clients.
# Delivery is what counts: mosquitto 2.0.11 grants a SUBACK even to a denied subscription
# and a PUBACK even to a denied publish.
source "$(dirname "$0")/lib.sh"

PLUGIN=$BIN/companion/broker_plugin/certfleet_mosquitto_claim.so
cd "$WORK"
make_claim_ca  # claim-ca.pem (factory A) and claim.pem (CN claim-batch-7)
# Factory B: trusted by the claim listener (in the bootstrap trust file) but in no rule,
# except for one certificate pinned by its fingerprint.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout claim-ca-b.key \
  -subj "/CN=factory B claim CA" -days 30 -out claim-ca-b.pem 2>/dev/null
for cn in claim-batch-8 claim-pinned; do
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$cn.key" -subj "/CN=$cn" \
    -out "$cn.csr" 2>/dev/null
  openssl x509 -req -in "$cn.csr" -CA claim-ca-b.pem -CAkey claim-ca-b.key -CAcreateserial -days 30 \
    -out "$cn.pem" 2>/dev/null
done
cat claim-ca.pem claim-ca-b.pem >claim-cas.pem
PINNED_FP=$(openssl x509 -in claim-pinned.pem -outform DER | sha256sum | cut -d' ' -f1)

THINGS_PORT=$(free_port)
CLAIM_PORT=$(free_port)
"$COMPANION" init --state-dir "$WORK/state" >/dev/null 2>&1
CONFIG=$WORK/state/companion.toml
set_config_key "$CONFIG" est bootstrap_trust_file "\"$WORK/claim-cas.pem\""
cat >>"$CONFIG" <<TOML

[mqtt]
enabled = true
host = "127.0.0.1"
port = $THINGS_PORT

[[claims]]
name = "factory-a"
ca_file = "$WORK/claim-ca.pem"
templates = ["gateway"]

[[claims]]
name = "pinned"
fingerprints = ["$PINNED_FP"]
templates = ["gateway"]
TOML
mkdir -p state/templates
for t in gateway sensor; do
  cat >"state/templates/$t.json" <<'JSON'
{
  "Parameters": {"SerialNumber": {"Type": "String"}},
  "Resources": {"thing": {"Type": "AWS::IoT::Thing",
                          "Properties": {"ThingName": {"Fn::Join": ["", ["gw-", {"Ref": "SerialNumber"}]]}}}},
  "DeviceConfiguration": {}
}
JSON
done

check "certfleetctl broker-config with claim rules" "$CTL" --config "$CONFIG" broker-config --out "$WORK/broker" \
  --port "$THINGS_PORT" --claim-port "$CLAIM_PORT" --claim-plugin "$PLUGIN"
check "claim-policy.json has both rules" python3 -c "
import json; p = json.load(open('broker/claim-policy.json'))
assert [r['name'] for r in p['rules']] == ['factory-a', 'pinned'], p
assert p['rules'][1]['certificate_fingerprints'] == ['$PINNED_FP']"
check "the plugin is loaded on the claim listener only" python3 -c "
conf = open('broker/mosquitto.conf').read()
things, claim = conf.split('listener $CLAIM_PORT')
assert 'plugin ' not in things and 'plugin $PLUGIN' in claim and 'plugin_opt_policy_file $WORK/broker/claim-policy.json' in claim"
start_broker "$WORK/broker"
wait_for_port "$THINGS_PORT" 20 && wait_for_port "$CLAIM_PORT" 20
check "the broker loaded the claim policy" grep -q "certfleet claim policy: loaded .*(2 rules)" broker.log
start_companion "$WORK/state"
"$CTL" --config "$CONFIG" ca cert >root.pem
deadline=$((SECONDS + 20))
until grep -q "as certfleet-companion" broker.log; do [ $SECONDS -lt $deadline ] || break; sleep 0.05; done
sleep 0.2

# claim_args CERT_BASENAME: mosquitto client options for that claim identity.
claim_args() { echo "--cafile root.pem --cert $1.pem --key $1.key -h 127.0.0.1 -p $CLAIM_PORT -V 311"; }
# rr OUT CERT CN CLIENT_ID TOPIC_SUFFIX PAYLOAD: one request, its accepted reply into OUT.
rr() {
  # shellcheck disable=SC2046
  mosquitto_rr $(claim_args "$2") -i "$4" -t "certfleet/provisioning/$3/$4/$5" \
    -e "certfleet/provisioning/$3/$4/$5/accepted" -m "$6" -W 5 >"$1"
}
csr_json() {
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$2" -subj "/CN=$1" 2>/dev/null |
    python3 -c 'import json,sys; print(json.dumps({"certificateSigningRequest": sys.stdin.read()}))'
}
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
register_json() {
  python3 -c "import json; print(json.dumps({'certificateOwnershipToken': '$1', 'parameters': {'SerialNumber': '$2'}}))"
}
# The companion's identity on the things listener sees every provisioning request that
# reached the broker.
OBSERVER="--cafile root.pem --cert state/tls/mqtt-client.pem --key state/keys/mqtt-client.key.pem -h 127.0.0.1 -p $THINGS_PORT -V 311"
# delivered CERT CN CLIENT_ID TOPIC_SUFFIX: publishes with the claim identity; succeeds if
# the message reached a subscriber.
delivered() {
  local out=$WORK/observed-$RANDOM
  # shellcheck disable=SC2086
  mosquitto_sub $OBSERVER -i "observer-$RANDOM" -t "certfleet/provisioning/$2/$3/$4" -C 1 -W 3 >"$out" 2>&1 &
  local sub=$!
  sleep 0.5
  # shellcheck disable=SC2046
  mosquitto_pub $(claim_args "$1") -i "$3" -t "certfleet/provisioning/$2/$3/$4" -m probe -q 1 || true
  wait $sub || true
  grep -qx probe "$out"
}
# reaches CERT CN CLIENT_ID TOPIC_SUFFIX: a message published on that client's topic by
# the companion's identity reaches the claim client subscribed to it.
reaches() {
  local out=$WORK/received-$RANDOM
  # shellcheck disable=SC2046
  mosquitto_sub $(claim_args "$1") -i "$3" -t "certfleet/provisioning/$2/$3/$4" -C 1 -W 3 >"$out" 2>&1 &
  local sub=$!
  sleep 0.5
  # shellcheck disable=SC2086
  mosquitto_pub $OBSERVER -i "replier-$RANDOM" -t "certfleet/provisioning/$2/$3/$4" -m reply -q 1 || true
  wait $sub || true
  grep -qx reply "$out"
}

# Factory A (rule factory-a: templates gateway).
csr_json gw-A1 a1.key >a1.csr.json
check "factory A: CreateCertificateFromCsr accepted" rr a1.create.json claim claim-batch-7 dev-a1 certificates/create-from-csr/json "$(cat a1.csr.json)"
check "factory A: RegisterThing with an allowed template accepted" rr a1.reg.json claim claim-batch-7 dev-a1 provisioning-templates/gateway/provision/json "$(register_json "$(field certificateOwnershipToken <a1.create.json 2>/dev/null)" A1)"
check_eq "factory A: the thing was registered" gw-A1 "$(field thingName <a1.reg.json 2>/dev/null)"
check "factory A: a request on an allowed topic is delivered" delivered claim claim-batch-7 dev-a2 certificates/create-from-csr/json
check "factory A: an allowed template's reply reaches the client" reaches claim claim-batch-7 dev-a2 provisioning-templates/gateway/provision/json/accepted
check_fails "factory A: RegisterThing with a template not in its rule is not delivered" delivered claim claim-batch-7 dev-a2 provisioning-templates/sensor/provision/json
check "and the broker says why" grep -q "denied write of 'certfleet/provisioning/claim-batch-7/dev-a2/provisioning-templates/sensor/provision/json'.*template not allowed" broker.log
check_fails "factory A: that template's replies do not reach the client" reaches claim claim-batch-7 dev-a2 provisioning-templates/sensor/provision/json/accepted
csr_json gw-A3 a3.key >a3.csr.json
rr a3.create.json claim claim-batch-7 dev-a3 certificates/create-from-csr/json "$(cat a3.csr.json)" 2>/dev/null || true
# mosquitto_rr exits 0 on its timeout too: what counts is that no reply came.
rr a3.reg.json claim claim-batch-7 dev-a3 provisioning-templates/sensor/provision/json \
  "$(register_json "$(field certificateOwnershipToken <a3.create.json 2>/dev/null)" A3)" 2>/dev/null || true
check "factory A: its certificate request was answered" grep -q certificateOwnershipToken a3.create.json
check_eq "factory A: RegisterThing for the sensor template gets no answer" "" "$(cat a3.reg.json)"
check_fails "factory A: what claim.acl refuses stays refused (publishing a reply)" delivered claim claim-batch-7 dev-a2 certificates/create-from-csr/json/accepted

# Factory B: trusted by the listener's cafile, matched by no rule.
check_fails "factory B: CreateCertificateFromCsr is not delivered" delivered claim-batch-8 claim-batch-8 dev-b1 certificates/create-from-csr/json
check_fails "factory B: RegisterThing is not delivered" delivered claim-batch-8 claim-batch-8 dev-b1 provisioning-templates/gateway/provision/json
check_fails "factory B: replies do not reach it" reaches claim-batch-8 claim-batch-8 dev-b1 certificates/create-from-csr/json/accepted
check "and the broker says why" grep -q "client 'dev-b1' .*no claim rule matches the certificate" broker.log

# Pinned by fingerprint (issued by factory B).
csr_json gw-P1 p1.key >p1.csr.json
check "pinned certificate: CreateCertificateFromCsr accepted" rr p1.create.json claim-pinned claim-pinned dev-p1 certificates/create-from-csr/json "$(cat p1.csr.json)"
check "pinned certificate: RegisterThing accepted" rr p1.reg.json claim-pinned claim-pinned dev-p1 provisioning-templates/gateway/provision/json "$(register_json "$(field certificateOwnershipToken <p1.create.json 2>/dev/null)" P1)"
check_eq "pinned certificate: the thing was registered" gw-P1 "$(field thingName <p1.reg.json 2>/dev/null)"
check_fails "pinned certificate: other templates are not delivered" delivered claim-pinned claim-pinned dev-p2 provisioning-templates/sensor/provision/json

# A claim identity is never a thing identity: the things listener trusts only the
# companion's CA.
for c in claim claim-batch-8 claim-pinned; do
  check_fails "$c cannot connect to the things listener" mosquitto_pub --cafile root.pem --cert "$c.pem" --key "$c.key" \
    -h 127.0.0.1 -p "$THINGS_PORT" -V 311 -i "thing-$c" -t "certfleet/things/gw-A1/status" -m x
done

# SIGHUP: a new policy takes effect; an invalid one is refused and the old one kept.
sed -i 's/templates = \["gateway"\]/templates = ["gateway", "sensor"]/' "$CONFIG"
"$CTL" --config "$CONFIG" broker-config --out "$WORK/broker" --port "$THINGS_PORT" --claim-port "$CLAIM_PORT" \
  --claim-plugin "$PLUGIN" >/dev/null 2>&1
kill -HUP "$BROKER_PID"
deadline=$((SECONDS + 10))
until grep -q "certfleet claim policy: reloaded" broker.log; do [ $SECONDS -lt $deadline ] || break; sleep 0.05; done
check "SIGHUP reloads the policy" grep -q "certfleet claim policy: reloaded" broker.log
check "after the reload factory A may use the sensor template" delivered claim claim-batch-7 dev-a4 provisioning-templates/sensor/provision/json
echo '{"version": 1, "rules": [{"name": "broken"}]}' >broker/claim-policy.json
kill -HUP "$BROKER_PID"
deadline=$((SECONDS + 10))
until grep -q "reload failed, keeping the previous policy" broker.log; do [ $SECONDS -lt $deadline ] || break; sleep 0.05; done
check "an invalid policy on SIGHUP is refused" grep -q "reload failed, keeping the previous policy" broker.log
check "and the previous policy stays in force" delivered claim claim-batch-7 dev-a5 certificates/create-from-csr/json
check_fails "for everyone" delivered claim-batch-8 claim-batch-8 dev-b2 certificates/create-from-csr/json

# A malformed policy file stops the broker at start.
P1=$(free_port)
P2=$(free_port)
sed "s/^listener $THINGS_PORT /listener $P1 /; s/^listener $CLAIM_PORT /listener $P2 /" broker/mosquitto.conf >bad.conf
[ "$(id -u)" -eq 0 ] && sed -i '1i user root' bad.conf
rc=0
timeout 10 mosquitto -c bad.conf >bad-broker.log 2>&1 || rc=$?
check_eq "a broker with a malformed policy does not start" yes "$([ $rc -ne 0 ] && [ $rc -ne 124 ] && echo yes || echo "no (rc $rc)")"
check "and logs why" grep -q "certfleet claim policy: cannot load the policy: .*claim-policy.json" bad-broker.log

stop_companion
stop_broker
finish
