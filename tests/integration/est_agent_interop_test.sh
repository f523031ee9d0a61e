#!/usr/bin/env bash
# certfleet-agent against an EST server that is not ours (independent_est_server.py):
# lenient decoding, 202 + Retry-After, chain in the response, Basic and mTLS.
source "$(dirname "$0")/lib.sh"

cd "$WORK"
mkdir srv
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv/ca.key -subj "/CN=independent CA" \
  -days 30 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out srv/ca.pem 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv/server.key -subj "/CN=localhost" \
  -out srv/server.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >srv/ext.cnf
openssl x509 -req -in srv/server.csr -CA srv/ca.pem -CAkey srv/ca.key -CAcreateserial -days 30 \
  -extfile srv/ext.cnf -out srv/server.pem 2>/dev/null
python3 "$HERE/independent_est_server.py" "$WORK/srv" "$WORK/ready" 2>"$WORK/independent.log" &
PIDS+=("$!")
wait_for_file "$WORK/ready" 20
SERVER=https://$(cat ready)

check "cacerts from a one-line base64 body" "$AGENT" est cacerts --server "$SERVER" --trust-anchor srv/ca.pem --out cacerts.pem
check "cacerts content is the CA" cmp <(openssl x509 -in cacerts.pem -noout -fingerprint) <(openssl x509 -in srv/ca.pem -noout -fingerprint)
printf 's3cret-pass\n' >pw
check "enroll through 202 + Retry-After, CRLF base64, chain in the response" "$AGENT" est enroll --server "$SERVER" \
  --trust-anchor srv/ca.pem --common-name device-7 --key-dir "$WORK/keys" --user device-7 --password-file pw --out "$WORK/dev.pem"
check "the server saw the request twice (202 then 200)" bash -c "[ \$(grep -c 'POST /.well-known/est/simpleenroll' '$WORK/independent.log') -eq 2 ]"
check "the stored certificate is the leaf, not the CA" bash -c "openssl x509 -in '$WORK/dev.pem' -noout -subject | grep -q device-7"
check "reenroll over mTLS against the independent server" "$AGENT" est reenroll --server "$SERVER" --trust-anchor srv/ca.pem \
  --cert "$WORK/dev.pem" --key-dir "$WORK/keys" --out "$WORK/dev.pem"
check "reenroll over TLS 1.2" "$AGENT" est reenroll --tls12 --server "$SERVER" --trust-anchor srv/ca.pem \
  --cert "$WORK/dev.pem" --key-dir "$WORK/keys" --out "$WORK/dev.pem"
printf 'wrong\n' >badpw
check_fails "a wrong password is an error" "$AGENT" est enroll --server "$SERVER" --trust-anchor srv/ca.pem \
  --common-name device-8 --key-dir "$WORK/keys8" --user device-7 --password-file badpw --out "$WORK/dev8.pem"
check "the error carries the HTTP status" grep -q "HTTP 401" "$WORK/last.out"

finish
