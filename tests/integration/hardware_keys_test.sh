#!/usr/bin/env bash
# Keys in hardware, end to end: the companion's CA and TLS keys are generated inside a
# PKCS#11 token (SoftHSM2) and it issues with them; an agent whose identity key lives in
# another token enrolls over EST, connects to a real mosquitto with that key, rotates A/B
# inside the token; a second agent does the same with its key in a software TPM (swtpm).
# No private key file appears anywhere.
source "$(dirname "$0")/lib.sh"

MODULE=/usr/lib/softhsm/libsofthsm2.so
for tool in softhsm2-util pkcs11-tool swtpm mosquitto; do
  command -v "$tool" >/dev/null || { echo "FAILED - $tool is missing (see DEPS in ./run)"; exit 1; }
done
[ -r "$MODULE" ] || { echo "FAILED - $MODULE is missing (package softhsm2)"; exit 1; }

cd "$WORK"
make_claim_ca
mkdir -m 700 tokens
export SOFTHSM2_CONF=$WORK/softhsm2.conf
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$WORK/tokens" >"$SOFTHSM2_CONF"
new_token() {  # new_token LABEL PIN: a fresh token and a 0600 PIN file LABEL.pin
  softhsm2-util --init-token --free --label "$1" --so-pin 87654321 --pin "$2" >/dev/null
  (umask 077 && printf '%s\n' "$2" >"$WORK/$1.pin")
}
private_keys_in() {  # labels of the private keys in token $1, sorted, one line
  pkcs11-tool --module "$MODULE" --token-label "$1" --login --pin "$(cat "$WORK/$1.pin")" --list-objects --type privkey 2>/dev/null |
    sed -n 's/^ *label: *//p' | sort | xargs
}
new_token fleet-ca 1111
new_token gw-001 2222

# ---- The companion with its keys in the HSM ----
"$COMPANION" init --state-dir "$WORK/scratch" >/dev/null 2>&1
mkdir -m 750 state
sed "s|$WORK/scratch|$WORK/state|g" scratch/companion.toml >state/companion.toml
CONFIG=$WORK/state/companion.toml
set_config_key "$CONFIG" keystore backend '"pkcs11"'
set_config_key "$CONFIG" keystore uri '"pkcs11:token=fleet-ca"'
set_config_key "$CONFIG" keystore module "\"$MODULE\""
set_config_key "$CONFIG" keystore pin_file "\"$WORK/fleet-ca.pin\""
set_config_key "$CONFIG" est bootstrap_trust_file "\"$WORK/claim-ca.pem\""
check "companion init generates the CA keys in the token" "$COMPANION" init --state-dir "$WORK/state"
KEYS=$(private_keys_in fleet-ca)
check "the token holds the companion's keys" test -n "$KEYS"
echo "    token fleet-ca: $KEYS"
check "no private key file in the companion's state" bash -c "! grep -rl 'PRIVATE KEY' '$WORK/state'"
check "the CA keys are not extractable" bash -c "pkcs11-tool --module '$MODULE' --token-label fleet-ca --login --pin 1111 \
  --list-objects --type privkey 2>/dev/null | grep -q 'never extractable'"

THINGS_PORT=$(free_port)
CLAIM_PORT=$(free_port)
cat >>"$CONFIG" <<TOML

[mqtt]
enabled = true
host = "127.0.0.1"
port = $THINGS_PORT
TOML
check "certfleetctl broker-config" "$CTL" --config "$CONFIG" broker-config --out "$WORK/broker" --port "$THINGS_PORT" --claim-port "$CLAIM_PORT"
start_broker "$WORK/broker"
wait_for_port "$THINGS_PORT" 20
start_companion "$WORK/state"
"$CTL" --config "$CONFIG" ca cert >root.pem
check "the issuing CA certificate verifies (signed in the token)" openssl verify -CAfile root.pem state/ca/issuing.pem

# ---- An agent with its identity in a PKCS#11 token ----
"$CTL" --config "$CONFIG" token create --serial gw-001 2>/dev/null >token.txt
mkdir -p gw
write_agent_toml debug "$THINGS_PORT" 10s >agent.toml
cat >>agent.toml <<TOML
[keystore]
backend = "pkcs11"
uri = "pkcs11:token=gw-001?module-path=$MODULE"
pin_file = "$WORK/gw-001.pin"
[renewal]
retry_base = "1s"
retry_cap = "2s"
TOML
state() { python3 -c "import json; print(json.load(open('$WORK/gw/state/state.json'))['$1'])" 2>/dev/null || true; }
wait_state() {  # wait_state FIELD VALUE SECONDS
  local deadline=$((SECONDS + $3))
  until [ "$(state "$1")" = "$2" ]; do
    [ $SECONDS -lt $deadline ] || { echo "timed out waiting for $1=$2 (is $(state "$1"))" >&2; return 1; }
    sleep 0.05
  done
}
token_pubkey() {  # the public key of private key label $2 in token $1, PEM
  pkcs11-tool --module "$MODULE" --token-label "$1" --read-object --type pubkey --label "$2" 2>/dev/null |
    openssl pkey -pubin -inform DER -pubout
}
cert_pubkey() { openssl x509 -in "$1" -noout -pubkey; }
broker_saw() {  # broker_saw CLIENT_ID SECONDS: mosquitto logged a connection from it
  local deadline=$((SECONDS + $2))
  until grep -q "as $1 " "$WORK/broker.log"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.1
  done
}

"$AGENT" run --config agent.toml >>"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
PIDS+=("$AGENT_PID")
check "the agent enrolls with its key in the token" wait_state state active 30
check "the certificate chains to the root" openssl verify -CAfile root.pem -untrusted state/ca/issuing.pem gw/identity.pem
SLOT=$(state currentSlot)
check_eq "the token holds exactly the identity key" "$SLOT" "$(private_keys_in gw-001)"
check "the certificate is for the token's key" test "$(cert_pubkey gw/identity.pem)" = "$(token_pubkey gw-001 "$SLOT")"
check "the broker accepted the agent's mTLS connection" broker_saw gw-001 20
check "no private key file on the gateway" bash -c "! grep -rl 'PRIVATE KEY' '$WORK/gw'"

FIRST=$(openssl x509 -in gw/identity.pem -outform DER | sha256sum)
check "renew --now rotates inside the token" "$AGENT" renew --now --config agent.toml
NEW_SLOT=$(state currentSlot)
check "the slot flipped" test "$NEW_SLOT" != "$SLOT"
check_eq "the old key object is destroyed, the new one stays" "$NEW_SLOT" "$(private_keys_in gw-001)"
check "the new certificate is for the new token key" test "$(cert_pubkey gw/identity.pem)" = "$(token_pubkey gw-001 "$NEW_SLOT")"
check "the certificate changed" test "$(openssl x509 -in gw/identity.pem -outform DER | sha256sum)" != "$FIRST"
check_eq "keys list reads the token" "$NEW_SLOT" "$("$AGENT" --config agent.toml keys list | xargs)"
kill "$AGENT_PID"
wait "$AGENT_PID" 2>/dev/null || true

# A wrong PIN is a clear error, and the PIN never shows up in it.
(umask 077 && echo 9999 >"$WORK/wrong.pin")
sed "s|$WORK/gw-001.pin|$WORK/wrong.pin|" agent.toml >agent-wrong-pin.toml
check_fails "keys list with a wrong PIN fails" "$AGENT" --config agent-wrong-pin.toml keys list
check "the error says wrong PIN" grep -q "wrong PIN" "$WORK/last.out"
check "the error does not hold the PIN" bash -c "! grep -q 9999 '$WORK/last.out'"

# ---- An agent with its identity in a TPM (swtpm) ----
mkdir -m 700 tpmstate
TPM_PORT=""
for attempt in 1 2 3 4 5 6 7 8 9 10; do
  P=$(free_port)
  python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', $P + 1)); s.close()" 2>/dev/null || continue
  swtpm socket --tpm2 --server "type=tcp,bindaddr=127.0.0.1,port=$P" --ctrl "type=tcp,bindaddr=127.0.0.1,port=$((P + 1))" \
    --tpmstate dir="$WORK/tpmstate" --flags startup-clear >>"$WORK/swtpm.log" 2>&1 &
  SWTPM_PID=$!
  PIDS+=("$SWTPM_PID")
  if wait_for_port "$((P + 1))" 10 2>/dev/null && kill -0 "$SWTPM_PID" 2>/dev/null; then TPM_PORT=$P; break; fi
  kill "$SWTPM_PID" 2>/dev/null || true
done
check "swtpm started" test -n "$TPM_PORT"
"$CTL" --config "$CONFIG" token create --serial gw-002 2>/dev/null >token2.txt
mkdir -p gw2
sed -e "s|$WORK/gw/|$WORK/gw2/|g" -e "s|gw-001|gw-002|g" -e "s|$WORK/token.txt|$WORK/token2.txt|" agent.toml |
  sed '/^\[keystore\]/,/^\[mqtt\]/{/^\[keystore\]/!{/^\[mqtt\]/!d}}' >agent2.toml
set_config_key agent2.toml keystore backend '"tpm"'
set_config_key agent2.toml keystore tcti "\"swtpm:host=127.0.0.1,port=$TPM_PORT\""
set_config_key agent2.toml keystore dir "\"$WORK/gw2/keys\""
"$AGENT" run --config agent2.toml >>"$WORK/agent2.log" 2>&1 &
AGENT2_PID=$!
PIDS+=("$AGENT2_PID")
state2() { python3 -c "import json; print(json.load(open('$WORK/gw2/state/state.json'))['$1'])" 2>/dev/null || true; }
check "the TPM agent enrolls" bash -c "deadline=\$((SECONDS + 30)); until [ \"\$(python3 -c \"import json; print(json.load(open('$WORK/gw2/state/state.json'))['state'])\" 2>/dev/null)\" = active ]; do [ \$SECONDS -lt \$deadline ] || exit 1; sleep 0.05; done"
SLOT2=$(state2 currentSlot)
check "the key blob is a TSS2 wrapped key, mode 0600" bash -c "head -1 '$WORK/gw2/keys/$SLOT2.tpm.pem' | grep -q 'BEGIN TSS2 PRIVATE KEY' && [ \$(stat -c %a '$WORK/gw2/keys/$SLOT2.tpm.pem') = 600 ]"
check "the certificate is for the TPM key" bash -c "[ \"\$(openssl x509 -in '$WORK/gw2/identity.pem' -noout -pubkey)\" = \"\$(TPM2OPENSSL_TCTI='swtpm:host=127.0.0.1,port=$TPM_PORT' openssl pkey -provider tpm2 -provider default -propquery '?provider=tpm2' -in '$WORK/gw2/keys/$SLOT2.tpm.pem' -pubout)\" ]"
check "the broker accepted the TPM agent's mTLS connection" broker_saw gw-002 20
check "renew --now rotates in the TPM" "$AGENT" renew --now --config agent2.toml
check "the TPM agent's slot flipped and the old blob is gone" bash -c "[ '$(state2 currentSlot)' != '$SLOT2' ] || [ \"\$(python3 -c \"import json; print(json.load(open('$WORK/gw2/state/state.json'))['currentSlot'])\")\" != '$SLOT2' ] && [ ! -e '$WORK/gw2/keys/$SLOT2.tpm.pem' ]"
kill "$AGENT2_PID"
wait "$AGENT2_PID" 2>/dev/null || true
finish
