#!/usr/bin/env bash
# The companion's EST server against curl + openssl as an independent client.
source "$(dirname "$0")/lib.sh"

cd "$WORK"
make_claim_ca

"$COMPANION" init --state-dir "$WORK/state" >/dev/null 2>&1
set_config_key "$WORK/state/companion.toml" est bootstrap_trust_file "\"$WORK/claim-ca.pem\""
set_config_key "$WORK/state/companion.toml" est labels '["fleet-a"]'
set_config_key "$WORK/state/companion.toml" est max_body_bytes 8192
start_companion "$WORK/state"
URL=https://$COMPANION_ADDR/.well-known/est
"$CTL" --config "$COMPANION_CONFIG" ca cert >root.pem
cp state/ca/issuing.pem issuing.pem

# cacerts, with and without a label, over TLS 1.2 and 1.3.
for tls in "--tlsv1.2 --tls-max 1.2" "--tlsv1.3"; do
  # shellcheck disable=SC2086
  check_eq "cacerts 200 ($tls)" 200 "$(http_status $tls --cacert root.pem "$URL/cacerts")"
done
check_eq "cacerts with label" 200 "$(http_status --cacert root.pem "$URL/fleet-a/cacerts")"
check_eq "unknown label 404" 404 "$(http_status --cacert root.pem "$URL/nope/cacerts")"
curl -sS -D headers.txt --cacert root.pem "$URL/cacerts" -o cacerts.b64
check "cacerts content type is exact" grep -qx $'Content-Type: application/pkcs7-mime\r' headers.txt
check "cacerts has Content-Length" grep -qi '^Content-Length: ' headers.txt
check "cacerts base64 lines are at most 64 columns" bash -c "! awk 'length(\$0) > 64' cacerts.b64 | grep -q ."
check "cacerts body ends with a newline" bash -c "[ \"\$(tail -c1 cacerts.b64 | od -An -c | tr -d ' ')\" = '\\n' ]"
check "cacerts parses as PKCS#7 with two certificates" bash -c "base64 -d cacerts.b64 | openssl pkcs7 -inform DER -print_certs | grep -c BEGIN | grep -qx 2"
check_eq "csrattrs 204" 204 "$(http_status --cacert root.pem "$URL/csrattrs")"

# simpleenroll with a one-time token (HTTP Basic), EC and RSA.
TOKEN=$("$CTL" --config "$COMPANION_CONFIG" token create --serial gw-ec 2>/dev/null)
make_csr ec gw-ec ec.csr.b64 ec.key
check_eq "token enroll (EC)" 200 "$(http_status --cacert root.pem -u "gw-ec:$TOKEN" -H 'Content-Type: application/pkcs10' --data-binary @ec.csr.b64 "$URL/simpleenroll")"
cp body.out ec.p7.b64
pkcs7_to_pem ec.p7.b64 ec.pem
check "issued certificate chains to the root" openssl verify -CAfile root.pem -untrusted issuing.pem ec.pem
check "issued certificate has clientAuth" bash -c "openssl x509 -in ec.pem -noout -ext extendedKeyUsage | grep -q 'TLS Web Client Authentication'"
check_eq "issued CN is the serial" "subject=CN = gw-ec" "$(openssl x509 -in ec.pem -noout -subject)"
check_eq "token reuse 401" 401 "$(http_status --cacert root.pem -u "gw-ec:$TOKEN" -H 'Content-Type: application/pkcs10' --data-binary @ec.csr.b64 "$URL/simpleenroll")"

TOKEN=$("$CTL" --config "$COMPANION_CONFIG" token create --serial gw-rsa 2>/dev/null)
make_csr rsa1024 gw-rsa weak.csr.b64
check_eq "RSA 1024 refused 400" 400 "$(http_status --cacert root.pem -u "gw-rsa:$TOKEN" -H 'Content-Type: application/pkcs10' --data-binary @weak.csr.b64 "$URL/simpleenroll")"
check_eq "wrong content type 415" 415 "$(http_status --cacert root.pem -u "gw-rsa:$TOKEN" -H 'Content-Type: text/plain' --data-binary @weak.csr.b64 "$URL/simpleenroll")"
check_eq "malformed base64 400" 400 "$(http_status --cacert root.pem -u "gw-rsa:$TOKEN" -H 'Content-Type: application/pkcs10' --data-binary 'not*base64!' "$URL/simpleenroll")"
check_eq "not a DER CSR 400" 400 "$(http_status --cacert root.pem -u "gw-rsa:$TOKEN" -H 'Content-Type: application/pkcs10' --data-binary "$(head -c 300 /dev/urandom | base64)" "$URL/simpleenroll")"
make_csr rsa2048 gw-rsa rsa.csr.b64
# Flip one byte near the end of the DER: the signature no longer verifies.
base64 -d rsa.csr.b64 >rsa.der
python3 -c "import sys; d=bytearray(open('rsa.der','rb').read()); d[-5]^=1; open('bad.der','wb').write(d)"
base64 bad.der >bad.csr.b64
check_eq "bad CSR signature 400" 400 "$(http_status --cacert root.pem -u "gw-rsa:$TOKEN" -H 'Content-Type: application/pkcs10' --data-binary @bad.csr.b64 "$URL/simpleenroll")"
head -c 20000 /dev/zero | base64 >big.b64
check_eq "oversized body 413" 413 "$(http_status --cacert root.pem -u "gw-rsa:$TOKEN" -H 'Content-Type: application/pkcs10' --data-binary @big.b64 "$URL/simpleenroll")"
check_eq "chunked request and RSA 2048 with the same token (not consumed by failures)" 200 "$(http_status --cacert root.pem -u "gw-rsa:$TOKEN" -H 'Transfer-Encoding: chunked' -H 'Content-Type: application/pkcs10; charset=us-ascii' --data-binary @rsa.csr.b64 "$URL/fleet-a/simpleenroll")"
check_eq "no credentials 401" 401 "$(http_status --cacert root.pem -H 'Content-Type: application/pkcs10' --data-binary @rsa.csr.b64 "$URL/simpleenroll")"
check "401 carries WWW-Authenticate Basic" bash -c "curl -sS -D - -o /dev/null --cacert '$WORK/root.pem' -H 'Content-Type: application/pkcs10' --data-binary @'$WORK/rsa.csr.b64' '$URL/simpleenroll' | grep -qi '^WWW-Authenticate: Basic'"
check_eq "unknown path 404" 404 "$(http_status --cacert root.pem "$URL/serverkeygenx")"
check_eq "GET simpleenroll 405" 405 "$(http_status --cacert root.pem "$URL/simpleenroll")"
TOKEN2=$("$CTL" --config "$COMPANION_CONFIG" token create --serial gw-x 2>/dev/null)
make_csr ec gw-other other.csr.b64
check_eq "CN other than the token's serial 403" 403 "$(http_status --cacert root.pem -u "gw-x:$TOKEN2" -H 'Content-Type: application/pkcs10' --data-binary @other.csr.b64 "$URL/simpleenroll")"
check_eq "token of another serial 401" 401 "$(http_status --cacert root.pem -u "gw-other:$TOKEN2" -H 'Content-Type: application/pkcs10' --data-binary @other.csr.b64 "$URL/simpleenroll")"

# simpleenroll with a claim certificate.
make_csr ec gw-claimed claimed.csr.b64 claimed.key
check_eq "claim certificate enroll" 200 "$(http_status --cacert root.pem --cert claim.pem --key claim.key -H 'Content-Type: application/pkcs10' --data-binary @claimed.csr.b64 "$URL/simpleenroll")"
# A device that lost the answer retries with the same key and is served again (the new
# certificate replaces the one it never received); another key is refused.
check_eq "claim enroll retried with the same key" 200 "$(http_status --cacert root.pem --cert claim.pem --key claim.key -H 'Content-Type: application/pkcs10' --data-binary @claimed.csr.b64 "$URL/simpleenroll")"
make_csr ec gw-claimed claimed2.csr.b64 claimed2.key
check_eq "claim enroll of an existing thing with another key 403" 403 "$(http_status --cacert root.pem --cert claim.pem --key claim.key -H 'Content-Type: application/pkcs10' --data-binary @claimed2.csr.b64 "$URL/simpleenroll")"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout rogue.key -subj "/CN=rogue" -days 3 -out rogue.pem 2>/dev/null
make_csr ec gw-rogue rogue.csr.b64
check_eq "unknown client certificate enroll 403" 403 "$(http_status --cacert root.pem --cert rogue.pem --key rogue.key -H 'Content-Type: application/pkcs10' --data-binary @rogue.csr.b64 "$URL/simpleenroll")"

# simplereenroll over mTLS with the current certificate.
make_csr ec gw-ec ec2.csr.b64 ec2.key
check_eq "reenroll (rekey, TLS 1.3)" 200 "$(http_status --tlsv1.3 --cacert root.pem --cert ec.pem --key ec.key -H 'Content-Type: application/pkcs10' --data-binary @ec2.csr.b64 "$URL/simplereenroll")"
pkcs7_to_pem body.out ec2.pem
check_eq "reenrolled subject unchanged" "subject=CN = gw-ec" "$(openssl x509 -in ec2.pem -noout -subject)"
check "reenrolled certificate chains to the root" openssl verify -CAfile root.pem -untrusted issuing.pem ec2.pem
make_csr ec gw-ec ec3.csr.b64 ec3.key
check_eq "reenroll (TLS 1.2)" 200 "$(http_status --tlsv1.2 --tls-max 1.2 --cacert root.pem --cert ec2.pem --key ec2.key -H 'Content-Type: application/pkcs10' --data-binary @ec3.csr.b64 "$URL/simplereenroll")"
pkcs7_to_pem body.out ec3.pem
check_eq "renew with the same key" 200 "$(http_status --cacert root.pem --cert ec3.pem --key ec3.key -H 'Content-Type: application/pkcs10' --data-binary @ec3.csr.b64 "$URL/simplereenroll")"
make_csr ec gw-renamed renamed.csr.b64
check_eq "reenroll changing the subject 403" 403 "$(http_status --cacert root.pem --cert ec3.pem --key ec3.key -H 'Content-Type: application/pkcs10' --data-binary @renamed.csr.b64 "$URL/simplereenroll")"
check_eq "reenroll without a client certificate 401" 401 "$(http_status --cacert root.pem -H 'Content-Type: application/pkcs10' --data-binary @ec3.csr.b64 "$URL/simplereenroll")"
check_eq "reenroll with a claim certificate 403" 403 "$(http_status --cacert root.pem --cert claim.pem --key claim.key -H 'Content-Type: application/pkcs10' --data-binary @ec3.csr.b64 "$URL/simplereenroll")"
# A certificate signed by the issuing CA that the registry never recorded.
openssl req -new -key ec3.key -subj "/CN=gw-ec" -out forged.csr 2>/dev/null
openssl x509 -req -in forged.csr -CA issuing.pem -CAkey state/keys/issuing-ca.key.pem -CAcreateserial -days 5 -out forged.pem 2>/dev/null
check_eq "reenroll with an unknown certificate 403" 403 "$(http_status --cacert root.pem --cert forged.pem --key ec3.key -H 'Content-Type: application/pkcs10' --data-binary @ec3.csr.b64 "$URL/simplereenroll")"
# Revoke the first certificate and try to reenroll with it.
ID=$(openssl x509 -in ec.pem -outform DER | sha256sum | cut -d' ' -f1)
check "certfleetctl certs revoke" "$CTL" --config "$COMPANION_CONFIG" certs revoke "$ID"
check_eq "reenroll with a revoked certificate 403" 403 "$(http_status --cacert root.pem --cert ec.pem --key ec.key -H 'Content-Type: application/pkcs10' --data-binary @ec2.csr.b64 "$URL/simplereenroll")"
check_fails "TLS 1.1 is refused" curl -sS --tlsv1.1 --tls-max 1.1 --cacert root.pem "$URL/cacerts"

# The certificate vending endpoint: serial + one-time token + CSR, JSON.
CVM=https://$COMPANION_ADDR/cvm/v1/certificates
CVM_TOKEN=$("$CTL" --config "$COMPANION_CONFIG" token create --serial gw-cvm 2>/dev/null)
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout cvm.key -subj "/CN=gw-cvm" -out cvm.csr 2>/dev/null
cvm_body() { python3 -c "import json,sys; print(json.dumps({'serialNumber': sys.argv[1], 'registrationToken': sys.argv[2], 'certificateSigningRequest': open('cvm.csr').read()}))" "$1" "$2"; }
cvm_body gw-cvm "$CVM_TOKEN" >cvm.json
check_eq "CVM issues a certificate" 200 "$(http_status --cacert root.pem -H 'Content-Type: application/json' --data-binary @cvm.json "$CVM")"
python3 -c "import json; print(json.load(open('$WORK/body.out'))['certificatePem'], end='')" >cvm.pem
check "the CVM certificate chains to the root (issuing CA included)" openssl verify -CAfile root.pem -untrusted cvm.pem cvm.pem
check_eq "a replayed CVM token is refused" 401 "$(http_status --cacert root.pem -H 'Content-Type: application/json' --data-binary @cvm.json "$CVM")"
check "the refusal is JSON" python3 -c "import json; assert json.load(open('$WORK/body.out'))['statusCode'] == 401"
CVM_TOKEN2=$("$CTL" --config "$COMPANION_CONFIG" token create --serial gw-cvm2 2>/dev/null)
cvm_body gw-cvm "$CVM_TOKEN2" >cvm-foreign.json
check_eq "a foreign CVM token is refused" 401 "$(http_status --cacert root.pem -H 'Content-Type: application/json' --data-binary @cvm-foreign.json "$CVM")"
check_eq "CVM wants JSON" 415 "$(http_status --cacert root.pem -H 'Content-Type: text/plain' --data-binary @cvm.json "$CVM")"
check_eq "CVM refuses a malformed body" 400 "$(http_status --cacert root.pem -H 'Content-Type: application/json' --data-binary '{"serialNumber": 5}' "$CVM")"
check_eq "CVM GET is 405" 405 "$(http_status --cacert root.pem "$CVM")"

# The registry agrees with what was handed out.
"$CTL" --config "$COMPANION_CONFIG" certs list --json >certs.json
check_eq "certificates recorded (the retried claim enrollment too)" 8 "$(python3 -c "import json; print(len(json.load(open('certs.json'))))")"
check_eq "one current certificate for gw-ec" 1 "$(python3 -c "import json; print(sum(1 for c in json.load(open('certs.json')) if c['thingName']=='gw-ec' and c['current']))")"
check_eq "one current certificate for gw-claimed" 1 "$(python3 -c "import json; print(sum(1 for c in json.load(open('certs.json')) if c['thingName']=='gw-claimed' and c['current']))")"
"$CTL" --config "$COMPANION_CONFIG" things list --json >things.json
check_eq "things recorded" "gw-claimed gw-cvm gw-ec gw-rsa" "$(python3 -c "import json; print(' '.join(t['thingName'] for t in json.load(open('things.json'))))")"
check "no token appears in the companion log" bash -c "! grep -qF '$TOKEN' '$WORK/companion.log'"

# A [hooks.pre_enroll] hook that denies: simpleenroll is 403 and the one-time token stays unused;
# once the hook allows (config changed, companion restarted) the same token enrolls.
stop_companion
mkdir -p hooks
printf '#!/bin/sh\ncat >/dev/null\necho '"'"'{"allow": false, "reason": "integration test says no"}'"'"'\n' >hooks/deny
printf '#!/bin/sh\ncat >/dev/null\necho '"'"'{"allow": true}'"'"'\n' >hooks/allow
chmod 0755 hooks/deny hooks/allow
cat >>"$COMPANION_CONFIG" <<TOML

[hooks.pre_enroll]
command = ["$WORK/hooks/deny"]
timeout = "5s"
TOML
start_companion "$WORK/state"
URL=https://$COMPANION_ADDR/.well-known/est
HOOK_TOKEN=$("$CTL" --config "$COMPANION_CONFIG" token create --serial gw-hook 2>/dev/null)
make_csr ec gw-hook hook.csr.b64 hook.key
check_eq "pre-enroll hook deny is 403" 403 "$(http_status --cacert root.pem -u "gw-hook:$HOOK_TOKEN" -H 'Content-Type: application/pkcs10' --data-binary @hook.csr.b64 "$URL/simpleenroll")"
check "the denial names the policy" grep -q "denied by policy" body.out
check_eq "the denial is a hook_denied security event" 1 "$(sqlite3 state/registry.sqlite3 "SELECT count(*) FROM security_events WHERE kind = 'hook_denied' AND detail LIKE '%integration test says no%'")"
check_eq "nothing was issued for gw-hook" 0 "$(sqlite3 state/registry.sqlite3 "SELECT count(*) FROM certificates WHERE thing_name = 'gw-hook'")"
stop_companion
sed -i "s|\"$WORK/hooks/deny\"|\"$WORK/hooks/allow\"|" "$COMPANION_CONFIG"
start_companion "$WORK/state"
URL=https://$COMPANION_ADDR/.well-known/est
check_eq "the same token enrolls once the hook allows" 200 "$(http_status --cacert root.pem -u "gw-hook:$HOOK_TOKEN" -H 'Content-Type: application/pkcs10' --data-binary @hook.csr.b64 "$URL/simpleenroll")"
check_eq "and only once" 401 "$(http_status --cacert root.pem -u "gw-hook:$HOOK_TOKEN" -H 'Content-Type: application/pkcs10' --data-binary @hook.csr.b64 "$URL/simpleenroll")"
stop_companion

# A hook that cannot run stops the companion at startup, naming the table.
sed -i "s|\"$WORK/hooks/allow\"|\"$WORK/hooks/missing\"|" "$COMPANION_CONFIG"
check_fails "a missing hook executable fails startup" bash -c "timeout 20 '$COMPANION' serve --config '$COMPANION_CONFIG' --est-listen 127.0.0.1:0 >'$WORK/startup.err' 2>&1"
check "the startup error names the table" grep -qF "[hooks.pre_enroll]" "$WORK/startup.err"
chmod 0775 hooks/allow
sed -i "s|\"$WORK/hooks/missing\"|\"$WORK/hooks/allow\"|" "$COMPANION_CONFIG"
check_fails "a group-writable hook executable fails startup" bash -c "timeout 20 '$COMPANION' serve --config '$COMPANION_CONFIG' --est-listen 127.0.0.1:0 >'$WORK/startup.err' 2>&1"
check "the startup error says why" grep -q "writable by group or others" "$WORK/startup.err"

finish
