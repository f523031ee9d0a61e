#!/usr/bin/env bash
# Fleet provisioning benchmark: N simulated devices provision themselves concurrently
# through mosquitto (claim listener, certfleet topic dialect) against
# certfleet-companion: CreateCertificateFromCsr then RegisterThing, each device on its
# own MQTT connection, with at most C devices in flight.
#
# Usage: bench/run_provision_bench.sh [BUILD_DIR]      (default: build-bench)
# Environment:
#   PROVISION_BENCH_DEVICES      simulated devices (default 500)
#   PROVISION_BENCH_CONCURRENCY  devices in flight at once (default 16)
#   PROVISION_BENCH_WORKERS      companion provisioning.workers (default 4)
#   TMPDIR                       where the claim CA, companion state and registry live;
#                                the registry fsyncs every issuance, so the disk matters
#
# Output: provision-load's line (devices= concurrency= ok= failed= failures= seconds=
# devices_per_s= p50_ms= p99_ms= max_ms= connect_p50_ms= create_p50_ms= register_p50_ms=
# client_cpu_s=), a line with the machine's load and the CPU the companion and the broker
# used during the run, then
# `reference_aws_default_quota_per_s=10` and `ratio_vs_aws_quota=` (devices_per_s / 10).
# AWS IoT's default quota for the fleet provisioning API is on the order of 10 requests
# per second per account; the ratio says how many such quotas one companion on this
# machine serves. Everything generated stays in a temporary directory that is removed on
# exit, together with every background process this script started.
set -euo pipefail

build_dir=${1:-build-bench}
devices=${PROVISION_BENCH_DEVICES:-500}
concurrency=${PROVISION_BENCH_CONCURRENCY:-16}
workers=${PROVISION_BENCH_WORKERS:-4}
aws_quota=10

die() {
  echo "run_provision_bench: $*" >&2
  exit 1
}

for v in devices concurrency workers; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done

[[ -d $build_dir ]] || die "build directory '$build_dir' not found (build with CERTFLEET_BUILD_BENCH=ON first)"
build_dir=$(cd "$build_dir" && pwd)
companion=$build_dir/companion/certfleet-companion
ctl=$build_dir/companion/certfleetctl
provision_load=$build_dir/bench/provision-load
for exe in "$companion" "$ctl" "$provision_load"; do
  [[ -x $exe ]] || die "missing $exe"
done
for cmd in openssl mosquitto python3; do
  command -v "$cmd" >/dev/null || die "$cmd command not found"
done

loadavg() { cut -d' ' -f1 /proc/loadavg; }
load_start=$(loadavg)
if awk -v l="$load_start" -v c="$(nproc)" 'BEGIN { exit !(l > c / 2) }'; then
  echo "run_provision_bench: warning: load average $load_start on $(nproc) cores; other work will skew the figures" >&2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/certfleet-provision-bench.XXXXXX")
pids=()
cleanup() {
  local pid
  for pid in ${pids[@]+"${pids[@]}"}; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in ${pids[@]+"${pids[@]}"}; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command in the background and waits for it: a signal then interrupts the wait
# at once, and the EXIT trap stops the command too. Returns the command's status.
run() {
  local pid rc=0
  "$@" &
  pid=$!
  pids+=("$pid")
  wait "$pid" || rc=$?
  return "$rc"
}

# Polls (bounded, 20 s) until FILE matches PATTERN while PID is alive.
wait_for() {
  local file=$1 pattern=$2 pid=$3 log=$4 deadline=$((SECONDS + 20))
  until grep -qE "$pattern" "$file" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -40 "$log" >&2 || true
      die "process $pid exited before it was ready"
    fi
    ((SECONDS < deadline)) || { tail -40 "$log" >&2 || true; die "timed out waiting for '$pattern' in $file"; }
    sleep 0.05
  done
}

# A loopback TCP port that nothing listens on right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# User+system CPU seconds consumed so far by PID.
cpu_seconds() {
  local stat
  stat=$(<"/proc/$1/stat")
  stat=${stat##*) }  # drop "pid (comm) ", comm may contain spaces
  # After the cut, utime and stime are fields 12 and 13.
  awk -v tck="$(getconf CLK_TCK)" '{ printf "%.2f", ($12 + $13) / tck }' <<<"$stat"
}

field() {  # field KEY LINE
  sed -n "s/.*\<$1=\([^ ]*\).*/\1/p" <<<"$2"
}

# --- Claim CA and claim certificate (EC P-256), as a factory would make them -----
ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ec_key "$work/claim-ca.key"
openssl req -x509 -new -key "$work/claim-ca.key" -subj "/CN=certfleet bench claim CA" -days 2 -sha256 \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$work/claim-ca.pem" 2>/dev/null
ec_key "$work/claim.key"
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' \
  >"$work/claim.ext"
openssl req -new -key "$work/claim.key" -subj "/CN=bench-claim" -out "$work/claim.csr" 2>/dev/null
openssl x509 -req -in "$work/claim.csr" -CA "$work/claim-ca.pem" -CAkey "$work/claim-ca.key" \
  -set_serial "0x$(openssl rand -hex 16)" -days 2 -sha256 -extfile "$work/claim.ext" \
  -out "$work/claim.pem" 2>/dev/null

# --- Companion state, template, broker configuration --------------------------------
state=$work/companion
things_port=$(free_port)
claim_port=$(free_port)
"$companion" init --state-dir "$state" >"$work/init.log" 2>&1 || { cat "$work/init.log" >&2; die "companion init failed"; }
config=$state/companion.toml
grep -q '^\[est\]$' "$config" || die "no [est] table in $config"
if grep -qE '^\[(mqtt|provisioning)\]$' "$config"; then
  die "$config already has an [mqtt] or [provisioning] table"
fi
sed -i -e '/^[[:space:]]*bootstrap_trust_file[[:space:]]*=/d' \
  -e "s|^\[est\]\$|[est]\nbootstrap_trust_file = \"$work/claim-ca.pem\"|" "$config"
cat >>"$config" <<TOML

[mqtt]
enabled = true
host = "127.0.0.1"
port = $things_port

[provisioning]
workers = $workers
TOML
mkdir -p "$state/templates"
cat >"$state/templates/gateway.json" <<'JSON'
{
  "Parameters": {
    "SerialNumber": {"Type": "String"},
    "AWS::IoT::Certificate::Id": {"Type": "String"}
  },
  "Resources": {
    "thing": {
      "Type": "AWS::IoT::Thing",
      "Properties": {
        "ThingName": {"Fn::Join": ["", ["gw-", {"Ref": "SerialNumber"}]]},
        "ThingGroups": ["gateways"]
      }
    },
    "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
    "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "gateway"}}
  },
  "DeviceConfiguration": {"telemetryInterval": "60"}
}
JSON
"$ctl" --config "$config" broker-config --out "$work/broker" --port "$things_port" --claim-port "$claim_port" \
  >"$work/broker-config.log" 2>&1 || { cat "$work/broker-config.log" >&2; die "certfleetctl broker-config failed"; }
"$ctl" --config "$config" ca cert >"$work/companion-root.pem"

# --- mosquitto ---------------------------------------------------------------------------
# mosquitto drops root privileges to its own user, which cannot read the temp directory,
# so a root run keeps it as root.
{
  if [[ $(id -u) -eq 0 ]]; then echo "user root"; fi
  cat "$work/broker/mosquitto.conf"
} >"$work/broker-run.conf"
mosquitto -c "$work/broker-run.conf" >"$work/broker.log" 2>&1 &
broker_pid=$!
pids+=("$broker_pid")
wait_for "$work/broker.log" "Opening ipv[46] listen socket on port $claim_port" "$broker_pid" "$work/broker.log"

# --- Companion -------------------------------------------------------------------------
"$companion" serve --config "$config" --est-listen 127.0.0.1:0 --ready-file "$work/ready" \
  >"$work/companion.log" 2>&1 &
companion_pid=$!
pids+=("$companion_pid")
wait_for "$work/ready" '^127\.0\.0\.1:[0-9]+$' "$companion_pid" "$work/companion.log"
# The companion has subscribed once its connection shows in the broker log.
wait_for "$work/broker.log" "as certfleet-companion" "$companion_pid" "$work/companion.log"

# --- Measurement -------------------------------------------------------------------------
rc=0
companion_cpu0=$(cpu_seconds "$companion_pid")
broker_cpu0=$(cpu_seconds "$broker_pid")
run "$provision_load" --host 127.0.0.1 --port "$claim_port" --trust-anchor "$work/companion-root.pem" \
  --claim-cert "$work/claim.pem" --claim-key "$work/claim.key" --template gateway \
  --devices "$devices" --concurrency "$concurrency" --serial-prefix "SN-$$-" --cn-format "gw-{serial}" \
  --timeout 30 >"$work/provision-load.out" || rc=$?
line=$(<"$work/provision-load.out")
companion_cpu=$(awk -v a="$companion_cpu0" -v b="$(cpu_seconds "$companion_pid")" 'BEGIN { printf "%.2f", b - a }')
broker_cpu=$(awk -v a="$broker_cpu0" -v b="$(cpu_seconds "$broker_pid")" 'BEGIN { printf "%.2f", b - a }')
[[ -n $line ]] || { tail -20 "$work/companion.log" >&2; die "provision-load failed (exit $rc)"; }
echo "$line"
ok=$(field ok "$line")
echo "cores=$(nproc) loadavg_start=$load_start loadavg_end=$(loadavg) companion_workers=$workers companion_cpu_s=$companion_cpu broker_cpu_s=$broker_cpu" \
  "companion_cpu_ms_per_device=$(awk -v c="$companion_cpu" -v n="$ok" 'BEGIN { if (n > 0) printf "%.2f", 1000 * c / n; else print "nan" }')"
rate=$(field devices_per_s "$line")
echo "reference_aws_default_quota_per_s=$aws_quota"
echo "ratio_vs_aws_quota=$(awk -v r="$rate" -v q="$aws_quota" 'BEGIN { printf "%.1f", r / q }')"
((rc == 0)) || { tail -20 "$work/companion.log" >&2; die "provision-load reported failures (exit $rc)"; }
