#!/usr/bin/env bash
# certfleet-companion init and serve: generated and imported CAs, idempotent re-runs,
# bad configs and bad imports that must leave nothing behind.
source "$(dirname "$0")/lib.sh"

cd "$WORK"
check "init generates a CA" "$COMPANION" init --state-dir "$WORK/gen" --hostname est.example --hostname 127.0.0.1
check_eq "state directory mode" 750 "$(stat -c %a gen)"
check_eq "key directory mode" 700 "$(stat -c %a gen/keys)"
check_eq "CA key file mode" 600 "$(stat -c %a gen/keys/issuing-ca.key.pem)"
check "issuing CA chains to the root" openssl verify -CAfile gen/ca/root.pem gen/ca/issuing.pem
check "EST certificate covers the hostnames" bash -c "openssl x509 -in gen/tls/est-server.pem -noout -ext subjectAltName | grep -q 'DNS:est.example, IP Address:127.0.0.1'"
before=$(sha256sum gen/ca/root.pem gen/ca/issuing.pem gen/keys/*.pem gen/companion.toml)
check "init again succeeds" "$COMPANION" init --state-dir "$WORK/gen"
check_eq "init again changes nothing" "$before" "$(sha256sum gen/ca/root.pem gen/ca/issuing.pem gen/keys/*.pem gen/companion.toml)"
check_fails "importing into a state that has a CA is refused" "$COMPANION" init --state-dir "$WORK/gen" \
  --import-ca-cert gen/ca/root.pem --import-ca-key gen/keys/root-ca.key.pem
check_eq "the refused import changed nothing" "$before" "$(sha256sum gen/ca/root.pem gen/ca/issuing.pem gen/keys/*.pem gen/companion.toml)"
check_fails "a relative state directory is refused" "$COMPANION" init --state-dir relative/dir
check "--ca-key-type rsa-3072" "$COMPANION" init --state-dir "$WORK/rsa" --ca-key-type rsa-3072
check "the RSA CA has 3072 bits" bash -c "openssl x509 -in rsa/ca/root.pem -noout -text | grep -q '3072 bit'"

# Import an existing two-level CA made with openssl.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -keyout ext-root.key -subj "/CN=existing root" \
  -days 3650 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out ext-root.pem 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ext-int.key -subj "/CN=existing issuing" -out ext-int.csr 2>/dev/null
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n' >ca.ext
openssl x509 -req -in ext-int.csr -CA ext-root.pem -CAkey ext-root.key -CAcreateserial -days 1000 -extfile ca.ext -out ext-int.pem 2>/dev/null
cat ext-int.pem ext-root.pem >ext-chain.pem
check_fails "import with a key that does not match is refused" "$COMPANION" init --state-dir "$WORK/bad" \
  --import-ca-cert ext-chain.pem --import-ca-key ext-root.key
check "the error says the key does not match" grep -q "does not match" "$WORK/last.out"
check "nothing of the refused import was stored" bash -c "[ ! -e '$WORK/bad/ca/root.pem' ] && [ -z \"\$(ls '$WORK/bad/keys' 2>/dev/null)\" ]"
check "import an existing CA chain" "$COMPANION" init --state-dir "$WORK/imp" --import-ca-cert ext-chain.pem --import-ca-key ext-int.key
check "the imported root is the trust anchor" cmp <("$CTL" --config imp/companion.toml ca cert) <(openssl x509 -in ext-root.pem)
start_companion "$WORK/imp"
TOKEN=$("$CTL" --config "$COMPANION_CONFIG" token create --serial gw-imp 2>/dev/null)
printf '%s\n' "$TOKEN" >tok
check "enroll under the imported CA" "$AGENT" est enroll --server "https://$COMPANION_ADDR" --trust-anchor ext-root.pem \
  --common-name gw-imp --key-dir "$WORK/keys" --user gw-imp --password-file tok --out "$WORK/gw-imp.pem"
check "the device certificate chains to the imported root" openssl verify -CAfile ext-root.pem -untrusted ext-int.pem gw-imp.pem
stop_companion

# serve refuses bad configs with file:line, and a busy port.
cp gen/companion.toml bad.toml
set_config_key bad.toml profile validty '"90d"'
cp gen/companion.toml dup.toml
printf '\n[profile]\nvalidity = "9d"\n' >>dup.toml
check_fails "serve refuses a TOML syntax error" "$COMPANION" serve --config dup.toml
check "the syntax error names the file and line" grep -q "dup.toml:[0-9]*:1: .*redefine" "$WORK/last.out"
check_fails "serve refuses an unknown key" "$COMPANION" serve --config bad.toml
check "the error names the file and line" grep -q "bad.toml:[0-9]*:[0-9]*: unknown key 'profile.validty'" "$WORK/last.out"
cp gen/companion.toml bad2.toml
sed -i 's/^validity = .*/validity = "forever"/' bad2.toml
check_fails "serve refuses a bad duration" "$COMPANION" serve --config bad2.toml
check "the error explains the duration" grep -q "bad duration 'forever'" "$WORK/last.out"
check_fails "serve refuses a bad listen address" "$COMPANION" serve --config gen/companion.toml --est-listen nowhere
start_companion "$WORK/gen"
check_fails "a second server on the same port fails clearly" "$COMPANION" serve --config gen/companion.toml --est-listen "$COMPANION_ADDR"
check "the error names the address" grep -q "cannot bind EST listener to $COMPANION_ADDR" "$WORK/last.out"
check_fails "certfleetctl token create refuses a bad serial" "$CTL" --config gen/companion.toml token create --serial 'a b'
check_fails "certfleetctl token create refuses a too long ttl" "$CTL" --config gen/companion.toml token create --serial ok --ttl 400d
check "certfleetctl ca cert prints PEM" bash -c "'$CTL' --config '$WORK/gen/companion.toml' ca cert | openssl x509 -noout"

finish
