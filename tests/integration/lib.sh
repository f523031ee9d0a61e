# Helpers for the cross-process tests. Each test sources this file, calls setup,
# and gets: $WORK (temp dir, removed on exit), $BIN (build dir), companion control,
# and check functions that count passes and failures.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${1:?usage: $0 BUILD_DIR}
BIN=$(cd "$BIN" && pwd)
COMPANION=$BIN/companion/certfleet-companion
CTL=$BIN/companion/certfleetctl
AGENT=$BIN/agent/certfleet-agent
WORK=$(mktemp -d)
PASSED=0
FAILED=0
PIDS=()

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
# With CERTFLEET_TEST_LOGS set, the server logs are shown before the work dir goes.
show_logs() {
  [ -n "${CERTFLEET_TEST_LOGS:-}" ] || return 0
  local f
  for f in "$WORK"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -40 "$f"; }; done
}
trap 'show_logs; cleanup' EXIT

pass() { PASSED=$((PASSED + 1)); echo "ok - $1"; }
fail() { FAILED=$((FAILED + 1)); echo "FAILED - $1"; }

# check NAME COMMAND...: passes when the command succeeds.
check() {
  local name=$1; shift
  local rc=0
  "$@" >"$WORK/cmd.out" 2>&1 || rc=$?
  cp "$WORK/cmd.out" "$WORK/last.out"
  if [ $rc -eq 0 ]; then pass "$name"; else fail "$name"; sed 's/^/    /' "$WORK/last.out" | head -20; fi
}
# check_fails NAME COMMAND...: passes when the command fails.
check_fails() {
  local name=$1; shift
  local rc=0
  "$@" >"$WORK/cmd.out" 2>&1 || rc=$?
  cp "$WORK/cmd.out" "$WORK/last.out"
  if [ $rc -ne 0 ]; then pass "$name"; else fail "$name (unexpectedly succeeded)"; fi
}
# check_eq NAME EXPECTED ACTUAL
check_eq() {
  if [ "$2" = "$3" ]; then pass "$1"; else fail "$1: expected '$2', got '$3'"; fi
}

finish() {
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

# wait_for_file FILE SECONDS: polls with a deadline (no fixed sleeps).
wait_for_file() {
  local file=$1 deadline=$((SECONDS + $2))
  while [ ! -s "$file" ]; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for $file" >&2; return 1; fi
    sleep 0.05
  done
}

# start_companion STATE_DIR: init (if needed) and serve on an ephemeral port.
# Sets COMPANION_ADDR and COMPANION_CONFIG.
start_companion() {
  local state=$1
  COMPANION_CONFIG=$state/companion.toml
  [ -f "$COMPANION_CONFIG" ] || "$COMPANION" init --state-dir "$state" >/dev/null 2>"$WORK/init.log"
  rm -f "$state/ready"
  "$COMPANION" serve --config "$COMPANION_CONFIG" --est-listen 127.0.0.1:0 --ready-file "$state/ready" \
    >>"$WORK/companion.log" 2>&1 &
  COMPANION_PID=$!
  PIDS+=("$COMPANION_PID")
  wait_for_file "$state/ready" 20
  COMPANION_ADDR=$(cat "$state/ready")
}

stop_companion() {
  kill "$COMPANION_PID" 2>/dev/null || true
  wait "$COMPANION_PID" 2>/dev/null || true
}

# set_config_key FILE TABLE KEY VALUE: inserts "KEY = VALUE" right after "[TABLE]".
set_config_key() {
  local file=$1 table=$2 key=$3 value=$4
  sed -i "/^${key} = /d" "$file"
  sed -i "/^\[${table}\]\$/a ${key} = ${value}" "$file"
}

# HTTP status of an EST request made with curl; extra curl arguments follow.
http_status() {
  curl -sS -o "$WORK/body.out" -w '%{http_code}' "$@" || true
}

# make_csr KEYSPEC CN OUT_B64 [KEYFILE]: an openssl CSR, base64 DER.
make_csr() {
  local spec=$1 cn=$2 out=$3 key=${4:-$WORK/csr-$RANDOM.key}
  case "$spec" in
    ec) openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$key" -subj "/CN=$cn" -outform DER 2>/dev/null ;;
    rsa*) openssl req -new -newkey "rsa:${spec#rsa}" -nodes -keyout "$key" -subj "/CN=$cn" -outform DER 2>/dev/null ;;
  esac | base64 >"$out"
}

# make_claim_ca: in the current directory, a claim CA (claim-ca.pem/.key) and a claim
# certificate signed by it (claim.pem/.key), as a factory would make them.
make_claim_ca() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout claim-ca.key \
    -subj "/CN=test claim CA" -days 30 -out claim-ca.pem 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout claim.key -subj "/CN=claim-batch-7" \
    -out claim.csr 2>/dev/null
  openssl x509 -req -in claim.csr -CA claim-ca.pem -CAkey claim-ca.key -CAcreateserial -days 30 -out claim.pem 2>/dev/null
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_for_port PORT SECONDS
wait_for_port() {
  local port=$1 deadline=$((SECONDS + $2))
  until python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $port)))" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then echo "nothing listens on port $port" >&2; return 1; fi
    sleep 0.05
  done
}

# start_broker CONF_DIR: mosquitto with the configuration certfleetctl broker-config wrote.
# mosquitto drops root privileges to its own user, which cannot read a test's temp
# directory, so a root test run keeps it as root. Sets BROKER_PID.
start_broker() {
  local dir=$1 conf=$WORK/broker-run.conf
  { [ "$(id -u)" -eq 0 ] && echo "user root"; cat "$dir/mosquitto.conf"; } >"$conf"
  mosquitto -c "$conf" >>"$WORK/broker.log" 2>&1 &
  BROKER_PID=$!
  PIDS+=("$BROKER_PID")
}

stop_broker() {
  kill "$BROKER_PID" 2>/dev/null || true
  wait "$BROKER_PID" 2>/dev/null || true
}

# fleet_init: the common start of a fleet test, in $WORK: a claim CA and claim
# certificate (make_claim_ca), THINGS_PORT and CLAIM_PORT, a companion state directory
# $WORK/state whose CONFIG trusts the claim CA for EST bootstrap and serves MQTT on the
# things port. Append further TOML to "$CONFIG", then call fleet_start.
fleet_init() {
  make_claim_ca
  THINGS_PORT=$(free_port)
  CLAIM_PORT=$(free_port)
  "$COMPANION" init --state-dir "$WORK/state" >/dev/null 2>&1
  CONFIG=$WORK/state/companion.toml
  set_config_key "$CONFIG" est bootstrap_trust_file "\"$WORK/claim-ca.pem\""
  cat >>"$CONFIG" <<TOML

[mqtt]
enabled = true
host = "127.0.0.1"
port = $THINGS_PORT
TOML
}

# fleet_start [BROKER_CONFIG_ARGS...]: certfleetctl broker-config into $WORK/broker (with
# the extra arguments), mosquitto on it, then the companion. Sets BROKER_PID, COMPANION_PID,
# COMPANION_ADDR; writes the CA certificate to $WORK/root.pem.
fleet_start() {
  check "certfleetctl broker-config" "$CTL" --config "$CONFIG" broker-config --out "$WORK/broker" \
    --port "$THINGS_PORT" --claim-port "$CLAIM_PORT" "$@"
  start_broker "$WORK/broker"
  echo "$BROKER_PID" >"$WORK/broker.pid"
  wait_for_port "$THINGS_PORT" 20
  wait_for_port "$CLAIM_PORT" 20
  start_companion "$WORK/state"
  "$CTL" --config "$CONFIG" ca cert >"$WORK/root.pem"
}

# write_agent_toml LOG_LEVEL MQTT_PORT MQTT_TIMEOUT: prints the agent.toml common to the
# daemon tests: gateway gw-001 with its state in $WORK/gw, enrolling over EST at
# $COMPANION_ADDR with the one-time token in $WORK/token.txt, MQTT on 127.0.0.1. The caller
# appends [keystore] and whatever else it needs.
write_agent_toml() {
  cat <<TOML
log_level = "$1"
[agent]
state_dir = "$WORK/gw/state"
control_socket = "$WORK/gw/run/control.sock"
time_sync_file = ""
[est]
server = "https://$COMPANION_ADDR"
trust_anchor_file = "$WORK/root.pem"
user = "gw-001"
password_file = "$WORK/token.txt"
[identity]
common_name = "gw-001"
cert_file = "$WORK/gw/identity.pem"
[mqtt]
host = "127.0.0.1"
port = $2
timeout = "$3"
TOML
}

# pkcs7_to_pem IN_B64 OUT_PEM
pkcs7_to_pem() {
  base64 -d "$1" | openssl pkcs7 -inform DER -print_certs -out "$2"
}
