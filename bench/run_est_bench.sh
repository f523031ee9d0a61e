#!/usr/bin/env bash
# EST enrollment benchmark: certfleet-companion simpleenroll (mTLS claim certificate,
# one new TLS connection per request) against the mTLS handshake rate of
# `openssl s_server` on the same machine with the same key types (EC P-256).
#
# Usage: bench/run_est_bench.sh [BUILD_DIR]      (default: build-bench)
# Environment:
#   EST_BENCH_CONCURRENCY    concurrent clients (default 8)
#   EST_BENCH_REQUESTS       requests per server and mode, over all rounds (default 2000)
#   EST_BENCH_WARMUP         unmeasured requests against each server first (default 50)
#   EST_BENCH_ROUNDS         the requests are split into this many alternating rounds of
#                            companion enroll / companion handshake / s_server handshake (default 4)
#   EST_BENCH_SERVER_THREADS companion est.threads (default: the companion's default)
#   TMPDIR                   where the temporary CA, companion state and registry live;
#                            the registry fsyncs every issuance, so the disk matters
#
# Output: one key=value line per round and measurement (round=R server=... mode=...),
# then one summed line each for companion enroll, companion handshake and s_server
# handshake, then `ratio=` (companion enroll rate / s_server handshake rate) and
# `target=0.5 met=yes|no`. Everything generated (keys,
# certificates, the companion's state) stays in a temporary directory that is removed
# on exit, together with every background process this script started.
set -euo pipefail

build_dir=${1:-build-bench}
concurrency=${EST_BENCH_CONCURRENCY:-8}
requests=${EST_BENCH_REQUESTS:-2000}
warmup=${EST_BENCH_WARMUP:-50}
rounds=${EST_BENCH_ROUNDS:-4}
server_threads=${EST_BENCH_SERVER_THREADS:-}
target=0.5
bench_name=run_est_bench

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for v in concurrency requests warmup rounds; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
((concurrency > 0 && requests > 0 && rounds > 0)) || die "concurrency, requests and rounds must be positive"
[[ -z $server_threads || $server_threads =~ ^[1-9][0-9]*$ ]] || die "EST_BENCH_SERVER_THREADS must be a positive integer"

use_build_dir "$build_dir" est-load
est_load=$load_tool
command -v openssl >/dev/null || die "openssl command not found"

note_load
make_work certfleet-est-bench

make_claim

# s_server gets the same shape as the companion's TLS identity: an EC P-256 leaf
# issued by an intermediate under a root, sent with the intermediate.
make_ca srv-root "certfleet bench server root"
make_ca srv-int "certfleet bench server intermediate" srv-root
ec_key "$work/srv.key"
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' \
  >"$work/srv.ext"
issue srv localhost srv-int

# --- Companion -------------------------------------------------------------------
init_companion
if [[ -n $server_threads ]]; then
  sed -i -e '/^[[:space:]]*threads[[:space:]]*=/d' -e "s|^\[est\]\$|[est]\nthreads = $server_threads|" "$config"
fi
"$ctl" --config "$config" ca cert >"$work/companion-root.pem"

"$companion" serve --config "$config" --est-listen 127.0.0.1:0 --ready-file "$work/ready" \
  >"$work/companion.log" 2>&1 &
companion_pid=$!
pids+=("$companion_pid")
wait_for "$work/ready" '^127\.0\.0\.1:[0-9]+$' "$companion_pid" "$work/companion.log"
companion_addr=$(<"$work/ready")

# --- openssl s_server ----------------------------------------------------------------
# Single-threaded, one connection at a time; -www so it never reads stdin; it listens on
# a kernel-chosen port and prints "ACCEPT 127.0.0.1:PORT". -naccept bounds its life.
openssl s_server -accept 127.0.0.1:0 -naccept $((requests + warmup + 10)) -www -verify_quiet \
  -cert "$work/srv.pem" -key "$work/srv.key" -cert_chain "$work/srv-int.pem" \
  -CAfile "$work/claim-ca.pem" -Verify 1 </dev/null >"$work/s_server.log" 2>&1 &
s_server_pid=$!
pids+=("$s_server_pid")
wait_for "$work/s_server.log" '^ACCEPT 127\.0\.0\.1:[0-9]+$' "$s_server_pid" "$work/s_server.log"
s_server_addr=$(sed -n 's/^ACCEPT \(127\.0\.0\.1:[0-9]*\)$/\1/p' "$work/s_server.log")

# --- Measurement -------------------------------------------------------------------------
run_id=$(date +%s)-$$
load_common=(--concurrency "$concurrency" --client-cert "$work/claim.pem" --client-key "$work/claim.key")
companion_args=(--url "https://$companion_addr" --trust-anchor "$work/companion-root.pem" "${load_common[@]}")
s_server_args=(--url "https://$s_server_addr" --trust-anchor "$work/srv-root.pem" "${load_common[@]}")

# Runs est-load once against NAME (server process PID) and prints its line prefixed with
# `round=R server=NAME` plus the server's CPU use; latencies go to $work/NAME-MODE.lat.
# A run with failures is shown and fails the script.
measure() {  # measure ROUND NAME PID MODE ARGS...
  local round=$1 name=$2 pid=$3 mode=$4 rc=0 cpu0 cpu1 line
  shift 4
  cpu0=$(cpu_seconds "$pid")
  run "$est_load" "$@" --mode "$mode" --latency-file "$work/round.lat" >"$work/est-load.out" 2>"$work/est-load.err" || rc=$?
  line=$(<"$work/est-load.out")
  cpu1=$(cpu_seconds "$pid")
  cat "$work/est-load.err" >&2
  [[ -n $line ]] || die "est-load failed (exit $rc) against $name"
  line="round=$round server=$name $line server_cpu_s=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')"
  echo "$line"
  echo "$line" >>"$work/$name-$mode.runs"
  cat "$work/round.lat" >>"$work/$name-$mode.lat"
  ((rc == 0)) || die "est-load reported failures against $name (exit $rc)"
}

# Sums the rounds of NAME-MODE into one line of the same shape as est-load's.
summarize() {  # summarize NAME MODE
  local name=$1 mode=$2
  sort -g "$work/$name-$mode.lat" >"$work/sorted.lat"
  awk -v name="$name" -v mode="$mode" -v rounds="$rounds" -v c="$concurrency" -v lat="$work/sorted.lat" '
    function get(k,   i, kv) { for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) return kv[2] } return 0 }
    { req += get("requests"); ok += get("ok"); failed += get("failed"); secs += get("seconds")
      ccpu += get("client_cpu_s"); scpu += get("server_cpu_s") }
    END {
      n = 0
      while ((getline v < lat) > 0) a[++n] = v
      p50 = 0; p99 = 0; max = 0
      if (n > 0) {
        i = int(0.5 * n); if (i < 0.5 * n) i++; p50 = a[i]
        i = int(0.99 * n); if (i < 0.99 * n) i++; p99 = a[i]
        max = a[n]
      }
      rate = 0; if (secs > 0) rate = ok / secs
      per_req = 0; if (ok > 0) per_req = 1000 * scpu / ok
      printf "server=%s mode=%s concurrency=%d requests=%d ok=%d failed=%d seconds=%.3f rate_per_s=%.1f", name, mode, c, req, ok, failed, secs, rate
      printf " p50_ms=%.2f p99_ms=%.2f max_ms=%.2f client_cpu_s=%.3f server_cpu_s=%.2f server_cpu_ms_per_req=%.3f rounds=%d\n", p50, p99, max, ccpu, scpu, per_req, rounds
    }' "$work/$name-$mode.runs"
}

if ((warmup > 0)); then
  run "$est_load" "${companion_args[@]}" --mode enroll --requests "$warmup" --cn-prefix "bench-$run_id-warm" >/dev/null
  run "$est_load" "${s_server_args[@]}" --mode handshake --requests "$warmup" >/dev/null
fi
# The three measurements alternate in rounds so that background load on a shared machine
# affects them alike. The companion's own handshake rate is reported too: it shows what
# one issuance adds on the same server stack.
per_round=$(((requests + rounds - 1) / rounds))
done_requests=0
for ((r = 1; done_requests < requests; r++)); do
  n=$((requests - done_requests < per_round ? requests - done_requests : per_round))
  measure "$r" companion "$companion_pid" enroll "${companion_args[@]}" --requests "$n" --cn-prefix "bench-$run_id-$r"
  measure "$r" companion "$companion_pid" handshake "${companion_args[@]}" --requests "$n"
  measure "$r" s_server "$s_server_pid" handshake "${s_server_args[@]}" --requests "$n"
  done_requests=$((done_requests + n))
done
stop "$companion_pid"
stop "$s_server_pid"

enroll=$(summarize companion enroll)
companion_handshake=$(summarize companion handshake)
s_server_handshake=$(summarize s_server handshake)
echo "$enroll"
echo "$companion_handshake"
echo "$s_server_handshake"

# --- Ratios ----------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "nan" }'; }
enroll_rate=$(field rate_per_s "$enroll")
ratio=$(ratio "$enroll_rate" "$(field rate_per_s "$s_server_handshake")")
own=$(ratio "$enroll_rate" "$(field rate_per_s "$companion_handshake")")
met=$(awk -v r="$ratio" -v t="$target" 'BEGIN { print (r != "nan" && r + 0 >= t) ? "yes" : "no" }')
echo "cores=$(nproc) loadavg_start=$load_start loadavg_end=$(loadavg) ratio_vs_companion_handshake=$own"
echo "ratio=$ratio"
echo "target=$target met=$met"
