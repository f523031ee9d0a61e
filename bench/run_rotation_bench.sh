#!/usr/bin/env bash
# Rotation wave benchmark: N simulated agents (rotation-load) provision themselves, connect
# to the broker with their certificates and wait; then one operator command
# (`certfleetctl rotate --expiring-within ...`) starts a wave over all of them. Each agent
# re-enrolls over EST with a new key, reconnects with the new certificate, publishes its
# signed rotation ack, and counts as rotated when the companion clears its retained
# request (the rotation is committed in the registry).
#
# Usage: bench/run_rotation_bench.sh [BUILD_DIR]      (default: build-bench)
# Environment:
#   ROTATION_BENCH_AGENTS       simulated agents (default 200)
#   ROTATION_BENCH_CONCURRENCY  rotations in flight at once (default 16)
#   TMPDIR                      where the companion state and registry live
#
# Output: rotation-load's line (devices= ok= failed= wave_s= rotations_per_s= p50_ms= p99_ms=
# max_ms=), then `wave_command_to_commit_s=` (from the rotate command to the last commit,
# which includes the coordinator's pickup delay, rotation.sweep_interval = 1s here) and
# the CPU the companion and the broker used during the wave. Everything generated stays
# in a temporary directory that is removed on exit, with every process started here.
set -euo pipefail

build_dir=${1:-build-bench}
agents=${ROTATION_BENCH_AGENTS:-200}
concurrency=${ROTATION_BENCH_CONCURRENCY:-16}
bench_name=run_rotation_bench

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for v in agents concurrency; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done

use_build_dir "$build_dir" rotation-load
rotation_load=$load_tool
for cmd in openssl mosquitto python3; do
  command -v "$cmd" >/dev/null || die "$cmd command not found"
done

note_load
make_work certfleet-rotation-bench
make_claim

things_port=$(free_port)
claim_port=$(free_port)
init_companion
cat >>"$config" <<TOML

[mqtt]
enabled = true
host = "127.0.0.1"
port = $things_port

[provisioning]
workers = 4

[rotation]
grace = "1h"
sweep_interval = "1s"
TOML
mkdir -p "$state/templates"
cat >"$state/templates/gateway.json" <<'JSON'
{
  "Parameters": {"SerialNumber": {"Type": "String"}},
  "Resources": {
    "thing": {"Type": "AWS::IoT::Thing",
              "Properties": {"ThingName": {"Fn::Join": ["", ["gw-", {"Ref": "SerialNumber"}]]}}}
  }
}
JSON
start_fleet_services

mkdir -m 0700 "$work/agents"
"$rotation_load" --things-port "$things_port" --claim-port "$claim_port" --trust-anchor "$work/companion-root.pem" \
  --claim-cert "$work/claim.pem" --claim-key "$work/claim.key" --template gateway --est "https://$est_addr" \
  --est-server-name localhost --work-dir "$work/agents" --devices "$agents" --concurrency "$concurrency" \
  --serial-prefix "R$$-" --timeout 60 --wave-timeout 900 >"$work/rotation-load.out" 2>"$work/rotation-load.err" &
load_pid=$!
pids+=("$load_pid")
wait_for "$work/rotation-load.out" '^ready' "$load_pid" "$work/rotation-load.err" 600

companion_cpu0=$(cpu_seconds "$companion_pid")
broker_cpu0=$(cpu_seconds "$broker_pid")
wave_start=$(date +%s.%N)
"$ctl" --config "$config" rotate --expiring-within 36500d --reason bench >"$work/rotate.out" ||
  die "certfleetctl rotate failed"
rc=0
wait "$load_pid" || rc=$?
forget "$load_pid"
wave_end=$(date +%s.%N)
companion_cpu=$(awk -v a="$companion_cpu0" -v b="$(cpu_seconds "$companion_pid")" 'BEGIN { printf "%.2f", b - a }')
broker_cpu=$(awk -v a="$broker_cpu0" -v b="$(cpu_seconds "$broker_pid")" 'BEGIN { printf "%.2f", b - a }')
line=$(grep '^devices=' "$work/rotation-load.out" || true)
[[ -n $line ]] || { cat "$work/rotation-load.err" >&2; tail -20 "$work/companion.log" >&2; die "rotation-load failed (exit $rc)"; }
echo "$line"
ok=$(field ok "$line")
completed=$("$ctl" --config "$config" rotations list --state COMPLETED --json --limit 1000000 |
  python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
echo "wave_command_to_commit_s=$(awk -v a="$wave_start" -v b="$wave_end" 'BEGIN { printf "%.3f", b - a }')" \
  "registry_completed=$completed cores=$(nproc) loadavg_start=$load_start loadavg_end=$(loadavg)" \
  "companion_cpu_s=$companion_cpu broker_cpu_s=$broker_cpu" \
  "companion_cpu_ms_per_rotation=$(awk -v c="$companion_cpu" -v n="$ok" 'BEGIN { if (n > 0) printf "%.2f", 1000 * c / n; else print "nan" }')"
((rc == 0)) || { tail -5 "$work/rotation-load.err" >&2; die "rotation-load reported failures (exit $rc)"; }
[[ $completed == "$agents" ]] || die "the registry shows $completed completed rotations, expected $agents"
