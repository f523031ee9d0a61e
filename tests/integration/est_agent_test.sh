#!/usr/bin/env bash
# certfleet-agent against the real companion: enroll with a token and with a claim
# certificate, re-enroll in place (rekey and renew), labels, TLS 1.2, config file,
# and failures that must leave everything as it was.
source "$(dirname "$0")/lib.sh"

cd "$WORK"
make_claim_ca

"$COMPANION" init --state-dir "$WORK/state" >/dev/null 2>&1
set_config_key "$WORK/state/companion.toml" est bootstrap_trust_file "\"$WORK/claim-ca.pem\""
set_config_key "$WORK/state/companion.toml" est labels '["fleet-a"]'
start_companion "$WORK/state"
SERVER=https://$COMPANION_ADDR
"$CTL" --config "$COMPANION_CONFIG" ca cert >root.pem

check "agent est cacerts" "$AGENT" est cacerts --server "$SERVER" --trust-anchor root.pem --out cacerts.pem
check_eq "cacerts holds two certificates" 2 "$(grep -c BEGIN cacerts.pem)"

# Token enrollment, then two in-place rotations and a renewal.
TOKEN=$("$CTL" --config "$COMPANION_CONFIG" token create --serial gw-001 2>/dev/null)
printf '%s\n' "$TOKEN" >token.txt
check "agent enroll with a token" "$AGENT" est enroll --server "$SERVER" --trust-anchor root.pem --common-name gw-001 \
  --key-dir "$WORK/keys" --user gw-001 --password-file token.txt --out "$WORK/gw-001.pem"
check "enrolled certificate verifies" openssl verify -CAfile root.pem -untrusted state/ca/issuing.pem gw-001.pem
check_eq "key file mode" 600 "$(stat -c %a keys/identity-a.key.pem)"
check_eq "key directory mode" 700 "$(stat -c %a keys)"
check_fails "enroll again over a working identity" "$AGENT" est enroll --server "$SERVER" --trust-anchor root.pem \
  --common-name gw-001 --key-dir "$WORK/keys" --user gw-001 --password-file token.txt --out "$WORK/gw-001.pem"
check "stderr says to use reenroll" grep -q "use reenroll" "$WORK/last.out"
FIRST=$(openssl x509 -in gw-001.pem -noout -fingerprint -sha256)
check "agent reenroll in place (rekey)" "$AGENT" est reenroll --server "$SERVER" --trust-anchor root.pem \
  --cert "$WORK/gw-001.pem" --key-dir "$WORK/keys" --out "$WORK/gw-001.pem"
check_eq "the key moved to slot b and slot a was removed" "identity-b" "$("$AGENT" keys list --key-dir "$WORK/keys" | tr '\n' ' ' | xargs)"
check "the new certificate matches the new key" bash -c "[ \"\$(openssl x509 -in '$WORK/gw-001.pem' -noout -pubkey)\" = \"\$(openssl pkey -in '$WORK/keys/identity-b.key.pem' -pubout)\" ]"
check "the certificate changed" bash -c "[ \"\$(openssl x509 -in '$WORK/gw-001.pem' -noout -fingerprint -sha256)\" != '$FIRST' ]"
check "agent reenroll over TLS 1.2 with a label" "$AGENT" est reenroll --tls12 --server "$SERVER/fleet-a" --trust-anchor root.pem \
  --cert "$WORK/gw-001.pem" --key-dir "$WORK/keys" --out "$WORK/gw-001.pem"
check "agent reenroll --keep-key" "$AGENT" est reenroll --server "$SERVER" --trust-anchor root.pem \
  --cert "$WORK/gw-001.pem" --key-dir "$WORK/keys" --out "$WORK/gw-001.pem" --keep-key
check_eq "renewal kept the key slot" "identity-a" "$("$AGENT" keys list --key-dir "$WORK/keys" | xargs)"
check_eq "registry: one current certificate for gw-001" 1 \
  "$("$CTL" --config "$COMPANION_CONFIG" certs list --thing gw-001 --json | python3 -c 'import json,sys; print(sum(c["current"] for c in json.load(sys.stdin)))')"
check_eq "registry: current certificate is the agent's" \
  "$(openssl x509 -in gw-001.pem -outform DER | sha256sum | cut -d' ' -f1)" \
  "$("$CTL" --config "$COMPANION_CONFIG" things list --json | python3 -c 'import json,sys; print([t["certificateId"] for t in json.load(sys.stdin) if t["thingName"]=="gw-001"][0])')"

# Claim-certificate enrollment: the claim key is imported into the key store first.
check "import the claim key" "$AGENT" keys import --key-dir "$WORK/claimkeys" --slot claim --from claim.key
check_eq "imported key mode" 600 "$(stat -c %a claimkeys/claim.key.pem)"
cat >agent.toml <<TOML
[est]
server = "$SERVER"
trust_anchor_file = "$WORK/root.pem"
client_cert_file = "$WORK/claim.pem"
client_key_slot = "claim"

[identity]
common_name = "gw-002"
cert_file = "$WORK/gw-002.pem"

[keystore]
backend = "file"
dir = "$WORK/claimkeys"
TOML
check "agent enroll with a claim certificate from agent.toml" "$AGENT" --config agent.toml est enroll --out "$WORK/gw-002.pem"
check "agent reenroll from agent.toml" "$AGENT" --config agent.toml est reenroll
check_eq "claim key untouched, identity in slot b" "claim identity-b" "$("$AGENT" keys list --key-dir "$WORK/claimkeys" | xargs)"

# Failures leave the identity as it was.
cp gw-002.pem gw-002.before
check_fails "reenroll against an untrusted anchor fails" "$AGENT" est reenroll --server "$SERVER" --trust-anchor claim-ca.pem \
  --cert "$WORK/gw-002.pem" --key-dir "$WORK/claimkeys" --out "$WORK/gw-002.pem"
check "certificate file unchanged after a failure" cmp gw-002.pem gw-002.before
check_eq "keys unchanged after a failure" "claim identity-b" "$("$AGENT" keys list --key-dir "$WORK/claimkeys" | xargs)"
stop_companion
check_fails "reenroll with the companion down fails" "$AGENT" est reenroll --server "$SERVER" --trust-anchor root.pem \
  --cert "$WORK/gw-002.pem" --key-dir "$WORK/claimkeys" --out "$WORK/gw-002.pem"
check "the error names the server" grep -q "$COMPANION_ADDR" "$WORK/last.out"
check "certificate file unchanged with the companion down" cmp gw-002.pem gw-002.before
start_companion "$WORK/state"
SERVER=https://$COMPANION_ADDR
check "reenroll after the companion comes back" "$AGENT" est reenroll --server "$SERVER" \
  --trust-anchor root.pem --cert "$WORK/gw-002.pem" --key-dir "$WORK/claimkeys" --out "$WORK/gw-002.pem"
check_fails "bad config key is an error" bash -c "printf '[est]\nsevrer = \"x\"\n' >'$WORK/bad.toml' && '$AGENT' --config '$WORK/bad.toml' est cacerts"
check "the error names file and line" grep -q "bad.toml:2" "$WORK/last.out"
check_fails "enroll without credentials fails" "$AGENT" est enroll --server "$SERVER" --trust-anchor root.pem \
  --common-name gw-003 --key-dir "$WORK/keys3" --out "$WORK/gw-003.pem"
check "no certificate written" test ! -e "$WORK/gw-003.pem"

check "the packaged agent.toml parses" bash -c "'$AGENT' --config '$HERE/../../packaging/config/agent.toml' keys list --key-dir '$WORK/emptykeys'"

finish
