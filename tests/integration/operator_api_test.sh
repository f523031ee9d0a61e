#!/usr/bin/env bash
# The operator API of a real companion: curl with a bearer token and with an operator
# client certificate, certfleetctl --server, and every response checked against
# docs/openapi.json.
source "$(dirname "$0")/lib.sh"

cd "$WORK"
SRC=$(cd "$HERE/../.." && pwd)

# An operator CA made here, and client certificates for alice (admin), bob (read-only)
# and mallory (no role); eve's certificate comes from a CA the companion does not trust.
make_operator_cert() {  # NAME CA
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -subj "/CN=$1" \
    -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days 2 -out "$1.pem" 2>/dev/null
}
for ca in operator-ca rogue-ca; do
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $ca.key -subj "/CN=$ca" -days 2 \
    -out $ca.pem 2>/dev/null
done
for who in alice bob mallory; do make_operator_cert $who operator-ca; done
make_operator_cert eve rogue-ca

"$COMPANION" init --state-dir "$WORK/state" >/dev/null 2>&1
CONF=$WORK/state/companion.toml
cat >>"$CONF" <<TOML

[api]
enabled = true
client_ca_file = "$WORK/operator-ca.pem"
admin_subjects = ["alice"]
read_only_subjects = ["bob"]
max_body_bytes = 4096
TOML
ADMIN=$("$CTL" --config "$CONF" api-token create --name ops-admin --role admin 2>/dev/null)
READER=$("$CTL" --config "$CONF" api-token create --name ops-reader --role read-only --ttl 1d 2>/dev/null)
printf '%s\n' "$ADMIN" >admin.token
printf '%s\n' "$READER" >reader.token
check "api-token list shows names, never secrets" bash -c "'$CTL' --config '$CONF' api-token list | grep -q ops-reader && ! '$CTL' --config '$CONF' api-token list --json | grep -qF -- '$ADMIN'"
check_fails "api-token create refuses an unknown role" "$CTL" --config "$CONF" api-token create --name x --role root

# The fleet's own CA as the operator CA would make every device an operator candidate.
sed "s|^client_ca_file = .*|client_ca_file = \"$WORK/state/ca/root.pem\"|" "$CONF" >fleet-ca-as-operator.toml
check_fails "serve refuses the fleet CA as the operator CA" timeout 20 "$COMPANION" serve \
  --config fleet-ca-as-operator.toml --est-listen 127.0.0.1:0 --api-listen 127.0.0.1:0
check "and says why" grep -q "trusts a fleet CA" "$WORK/last.out"

rm -f state/ready state/api-ready
"$COMPANION" serve --config "$CONF" --est-listen 127.0.0.1:0 --ready-file state/ready --api-listen 127.0.0.1:0 \
  --api-ready-file state/api-ready >>"$WORK/companion.log" 2>&1 &
PIDS+=("$!")
wait_for_file state/ready 20
wait_for_file state/api-ready 20
EST=https://$(cat state/ready)/.well-known/est
API=https://$(cat state/api-ready)
"$CTL" --config "$CONF" ca cert >root.pem

# Enroll one gateway over EST so that there is a thing and a certificate.
TOKEN=$("$CTL" --config "$CONF" token create --serial gw-1 2>/dev/null)
make_csr ec gw-1 gw1.csr.b64
check_eq "EST enrollment of gw-1" 200 "$(http_status --cacert root.pem -u "gw-1:$TOKEN" -H 'Content-Type: application/pkcs10' --data-binary @gw1.csr.b64 "$EST/simpleenroll")"

# api METHOD PATH [curl args...]: records the response for the OpenAPI check; prints the status.
# It runs in a command substitution (a subshell): the counter lives in a file.
echo 0 >"$WORK/n"
last() { echo "$WORK/resp.$(cat "$WORK/n")"; }
api() {
  local method=$1 path=$2; shift 2
  local N
  N=$(($(cat "$WORK/n") + 1))
  echo "$N" >"$WORK/n"
  local status
  status=$(curl -sS -o "$WORK/resp.$N" -w '%{http_code}' --cacert root.pem -X "$method" "$@" "$API$path" || true)
  { echo "$method $path $status"; cat "$WORK/resp.$N"; } >"$WORK/record.$N"
  echo "$status"
}
BEARER_A=(-H "Authorization: Bearer $ADMIN")
BEARER_R=(-H "Authorization: Bearer $READER")

check_eq "TLS 1.1 is refused" fail "$(curl -sS -o /dev/null --cacert root.pem --tlsv1.1 --tls-max 1.1 "$API/things" 2>/dev/null && echo ok || echo fail)"
check_eq "no credentials 401" 401 "$(api GET /things)"
check_eq "unknown token 401" 401 "$(api GET /things -H 'Authorization: Bearer nope')"
check_eq "read-only token lists things" 200 "$(api GET /things "${BEARER_R[@]}")"
check "gw-1 is listed" grep -q '"thingName":"gw-1"' "$(last)"
check_eq "describe gw-1" 200 "$(api GET /things/gw-1 "${BEARER_R[@]}")"
CERT_ID=$(python3 -c "import json; print(json.load(open('$(last)'))['certificates'][0]['certificateId'])")
check_eq "bad thing name 400" 400 "$(api GET '/things/bad%20name' "${BEARER_R[@]}")"
check_eq "unknown thing 404" 404 "$(api GET /things/nobody "${BEARER_R[@]}")"
check_eq "certificates with filters" 200 "$(api GET '/certificates?status=ACTIVE&thingName=gw-1&expiringBefore=2999-01-01T00:00:00Z' "${BEARER_R[@]}")"
check_eq "certificate paging" 200 "$(api GET '/certificates?limit=1' "${BEARER_R[@]}")"
check_eq "bad limit 400" 400 "$(api GET '/certificates?limit=0' "${BEARER_R[@]}")"
check_eq "bad cursor 400" 400 "$(api GET '/certificates?nextToken=zz%24' "${BEARER_R[@]}")"
check_eq "describe certificate" 200 "$(api GET "/certificates/$CERT_ID" "${BEARER_R[@]}")"
check_eq "bad certificate id 400" 400 "$(api GET /certificates/XYZ "${BEARER_R[@]}")"
check_eq "read-only cannot deactivate 403" 403 "$(api POST "/certificates/$CERT_ID/deactivate" "${BEARER_R[@]}" -d '')"
check_eq "malformed JSON body 400" 400 "$(api POST /rotations "${BEARER_A[@]}" -d '{"thingName":')"
head -c 8000 /dev/zero | tr '\0' 'a' >big.txt
check_eq "oversized body 413" 413 "$(api POST /rotations "${BEARER_A[@]}" --data-binary @big.txt)"
check_eq "create rotation 201" 201 "$(api POST /rotations "${BEARER_A[@]}" -d '{"thingName":"gw-1","reason":"api test"}')"
ROT=$(python3 -c "import json; print(json.load(open('$(last)'))['rotationId'])")
check_eq "second rotation 409" 409 "$(api POST /rotations "${BEARER_A[@]}" -d '{"thingName":"gw-1"}')"
check_eq "rotations list" 200 "$(api GET '/rotations?state=PENDING' "${BEARER_R[@]}")"
check_eq "describe rotation" 200 "$(api GET "/rotations/$ROT" "${BEARER_R[@]}")"
check_eq "cancel rotation" 200 "$(api POST "/rotations/$ROT/cancel" "${BEARER_A[@]}" -d '')"
check_eq "enrollment token 201" 201 "$(api POST /enrollment-tokens "${BEARER_A[@]}" -d '{"serial":"gw-2","ttl":"1h"}')"
check_eq "enrollment tokens list" 200 "$(api GET /enrollment-tokens "${BEARER_R[@]}")"
check_eq "templates list" 200 "$(api GET /templates "${BEARER_R[@]}")"
check_eq "unknown template 404" 404 "$(api GET /templates/none "${BEARER_R[@]}")"
check_eq "unknown endpoint 404" 404 "$(api GET /nothing "${BEARER_R[@]}")"
check_eq "wrong method 405" 405 "$(api DELETE /things "${BEARER_R[@]}")"

# Operator client certificates.
check_eq "alice (admin) deactivates by certificate" 200 "$(api POST "/certificates/$CERT_ID/deactivate" --cert alice.pem --key alice.key -d '{"reason":"api test"}')"
check_eq "bob (read-only) reads by certificate" 200 "$(api GET /things --cert bob.pem --key bob.key)"
check_eq "bob (read-only) may not revoke" 403 "$(api POST "/certificates/$CERT_ID/revoke" --cert bob.pem --key bob.key -d '')"
check_eq "mallory (no role) 401" 401 "$(api GET /things --cert mallory.pem --key mallory.key)"
check_eq "eve (untrusted CA) fails the handshake" fail "$(curl -sS -o /dev/null --cacert root.pem --cert eve.pem --key eve.key "$API/things" 2>/dev/null && echo ok || echo fail)"

check_eq "security events" 200 "$(api GET '/security-events?kind=api_auth_failed' "${BEARER_R[@]}")"
check "failed authentications are recorded" grep -q 'api_auth_failed' "$(last)"
check_eq "events by time range" 200 "$(api GET '/security-events?since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z&limit=2' "${BEARER_R[@]}")"
check_eq "metrics need a credential" 401 "$(api GET /metrics)"
check_eq "metrics" 200 "$(api GET /metrics "${BEARER_R[@]}")"
check "metrics count certificates by status" grep -q '^certfleet_certificates{status="INACTIVE"} 1' "$(last)"
check "metrics count enrollments" grep -q '^certfleet_est_requests_total{.*operation="simpleenroll".*} 1' "$(last)"

# Every recorded response matches the OpenAPI document.
check "responses match docs/openapi.json" python3 "$HERE/openapi_check.py" "$SRC/docs/openapi.json" "$WORK"/record.*

# certfleetctl remote mode.
R=("$CTL" --server "$API" --ca-file root.pem --token-file reader.token)
A=("$CTL" --server "$API" --ca-file root.pem --token-file admin.token)
check "remote things list" bash -c "$(printf '%q ' "${R[@]}") things list | grep -q gw-1"
check "remote certs list --json" bash -c "$(printf '%q ' "${R[@]}") certs list --json --status INACTIVE | grep -q $CERT_ID"
check "remote certs show" bash -c "$(printf '%q ' "${R[@]}") certs show $CERT_ID | grep -q INACTIVE"
check_fails "remote revoke needs admin" "${R[@]}" certs revoke "$CERT_ID"
check "remote revoke as admin" "${A[@]}" certs revoke "$CERT_ID" --reason "api test"
check "remote events --kind" bash -c "$(printf '%q ' "${R[@]}") events --kind certificate_revoked | grep -q $CERT_ID"
check "remote token create prints a secret" bash -c "$(printf '%q ' "${A[@]}") token create --serial gw-3 2>/dev/null | grep -Eq '^[A-Za-z0-9_-]{43}\$'"
check "remote with a client certificate" "$CTL" --server "$API" --ca-file root.pem --cert alice.pem --key alice.key rotations list
check "remote templates list" "${R[@]}" templates list
check_fails "remote without credentials" "$CTL" --server "$API" --ca-file root.pem things list
check_fails "remote with an unverified server" "$CTL" --server "$API" --token-file reader.token things list

# A revoked API token stops working, and local events show the revocation.
"$CTL" --config "$CONF" api-token revoke ops-reader >/dev/null
check_eq "revoked token 401" 401 "$(api GET /things "${BEARER_R[@]}")"
check "local events --kind api_token_revoked" bash -c "'$CTL' --config '$CONF' events --kind api_token_revoked --json | grep -q token:ops-reader"

finish
