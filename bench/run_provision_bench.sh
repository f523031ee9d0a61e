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
bench_name=run_provision_bench

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for v in devices concurrency workers; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done

use_build_dir "$build_dir" provision-load
provision_load=$load_tool
for cmd in openssl mosquitto python3; do
  command -v "$cmd" >/dev/null || die "$cmd command not found"
done

note_load
make_work certfleet-provision-bench

# --- Claim CA and claim certificate (EC P-256), as a factory would make them -----
make_claim

# --- Companion state, template, broker configuration --------------------------------
things_port=$(free_port)
claim_port=$(free_port)
init_companion
if grep -qE '^\[(mqtt|provisioning)\]$' "$config"; then
  die "$config already has an [mqtt] or [provisioning] table"
fi
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
start_fleet_services

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
