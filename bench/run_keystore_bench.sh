#!/usr/bin/env bash
# Key store benchmark: signatures/s and TLS 1.3 mTLS handshakes/s through the hal for the
# file, PKCS#11 (SoftHSM2, a fresh token) and TPM (swtpm, fresh state) backends, each
# next to the raw backend measured in the same run (see keystore_bench.cc).
#
# Usage: bench/run_keystore_bench.sh [BUILD_DIR]      (default: build-bench)
# Environment: KEYSTORE_BENCH_SECONDS (per measurement, default 1), KEYSTORE_BENCH_ROUNDS (default 3)
#
# Output: one line per backend and measure:
#   backend=B measure=M hal_per_s=X reference=R reference_per_s=Y ratio=X/Y
set -euo pipefail

build_dir=${1:-build-bench}
bench=$build_dir/bench/keystore-bench
module=/usr/lib/softhsm/libsofthsm2.so
for tool in softhsm2-util swtpm python3; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (see DEPS in ./run)" >&2; exit 1; }
done
[ -x "$bench" ] || { echo "$bench is missing: build with -DCERTFLEET_BUILD_BENCH=ON" >&2; exit 1; }

work=$(mktemp -d)
swtpm_pid=""
cleanup() {
  [ -n "$swtpm_pid" ] && { kill "$swtpm_pid" 2>/dev/null || true; wait "$swtpm_pid" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -m 700 "$work/tokens" "$work/tpm"
export SOFTHSM2_CONF=$work/softhsm2.conf
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$work/tokens" >"$SOFTHSM2_CONF"
softhsm2-util --init-token --free --label bench --so-pin 87654321 --pin 2468 >/dev/null
(umask 077 && echo 2468 >"$work/pin")

# swtpm on two adjacent free loopback ports (its TCTI expects control = server + 1).
port=""
for _ in 1 2 3 4 5 6 7 8 9 10; do
  p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
  python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', $p + 1)); s.close()" 2>/dev/null || continue
  swtpm socket --tpm2 --server "type=tcp,bindaddr=127.0.0.1,port=$p" --ctrl "type=tcp,bindaddr=127.0.0.1,port=$((p + 1))" \
    --tpmstate dir="$work/tpm" --flags startup-clear >>"$work/swtpm.log" 2>&1 &
  swtpm_pid=$!
  deadline=$((SECONDS + 10))
  until python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $((p + 1)))))" 2>/dev/null; do
    kill -0 "$swtpm_pid" 2>/dev/null && [ $SECONDS -lt $deadline ] || break
    sleep 0.05
  done
  if kill -0 "$swtpm_pid" 2>/dev/null; then port=$p; break; fi
  swtpm_pid=""
done
[ -n "$port" ] || { echo "swtpm did not start" >&2; exit 1; }

"$bench" --dir "$work" --pkcs11-module "$module" --pkcs11-token bench --pkcs11-pin-file "$work/pin" \
  --tcti "swtpm:host=127.0.0.1,port=$port" --seconds "${KEYSTORE_BENCH_SECONDS:-1}" --rounds "${KEYSTORE_BENCH_ROUNDS:-3}" \
  2> >(grep -v '^WARNING:\|^ERROR:' >&2)
