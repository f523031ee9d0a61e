# Shared helpers of the bench/run_*_bench.sh scripts; they source this file after
# setting bench_name (the prefix of their messages).
# shellcheck shell=bash

die() {
  echo "$bench_name: $*" >&2
  exit 1
}

# use_build_dir DIR TOOL: sets build_dir (absolute), companion, ctl and the load
# generator DIR/bench/TOOL (returned in load_tool); dies unless all are built.
use_build_dir() {
  [[ -d $1 ]] || die "build directory '$1' not found (build with CERTFLEET_BUILD_BENCH=ON first)"
  build_dir=$(cd "$1" && pwd)
  companion=$build_dir/companion/certfleet-companion
  ctl=$build_dir/companion/certfleetctl
  load_tool=$build_dir/bench/$2
  local exe
  for exe in "$companion" "$ctl" "$load_tool"; do
    [[ -x $exe ]] || die "missing $exe"
  done
}

loadavg() { cut -d' ' -f1 /proc/loadavg; }

# Sets load_start to the current load average and warns when the machine is busy.
note_load() {
  load_start=$(loadavg)
  if awk -v l="$load_start" -v c="$(nproc)" 'BEGIN { exit !(l > c / 2) }'; then
    echo "$bench_name: warning: load average $load_start on $(nproc) cores; other work will skew the figures" >&2
  fi
}

# make_work PREFIX: creates the temporary directory $work, removed on exit together
# with every background process listed in pids.
make_work() {
  work=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  pids=()
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

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

# Forgets a background process that has ended.
forget() {
  local p rest=()
  for p in ${pids[@]+"${pids[@]}"}; do
    [[ $p == "$1" ]] || rest+=("$p")
  done
  pids=(${rest[@]+"${rest[@]}"})
}

# Stops one background process started here.
stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  forget "$1"
}

# Runs a command in the background and waits for it: a signal then interrupts the wait
# at once, and the EXIT trap stops the command too. Returns the command's status.
run() {
  local pid rc=0
  "$@" &
  pid=$!
  pids+=("$pid")
  wait "$pid" || rc=$?
  forget "$pid"
  return "$rc"
}

# wait_for FILE PATTERN PID LOG [SECONDS]: polls (bounded, default 20 s) until FILE matches
# PATTERN while PID is alive.
wait_for() {
  local file=$1 pattern=$2 pid=$3 log=$4 deadline=$((SECONDS + ${5:-20}))
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

# --- Keys and certificates (EC P-256), generated with the openssl CLI in $work -------
ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
make_ca() {  # make_ca NAME CN [ISSUER]  -> NAME.key NAME.pem
  local name=$1 cn=$2 issuer=${3:-}
  ec_key "$work/$name.key"
  if [[ -z $issuer ]]; then
    openssl req -x509 -new -key "$work/$name.key" -subj "/CN=$cn" -days 2 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out "$work/$name.pem" 2>/dev/null
  else
    printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n' >"$work/$name.ext"
    issue "$name" "$cn" "$issuer"
  fi
}
issue() {  # issue NAME CN ISSUER  (extensions from NAME.ext; key NAME.key must exist)
  local name=$1 cn=$2 issuer=$3
  openssl req -new -key "$work/$name.key" -subj "/CN=$cn" -out "$work/$name.csr" 2>/dev/null
  openssl x509 -req -in "$work/$name.csr" -CA "$work/$issuer.pem" -CAkey "$work/$issuer.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 2 -sha256 -extfile "$work/$name.ext" \
    -out "$work/$name.pem" 2>/dev/null
}

# The claim CA and a claim certificate issued by it, as a factory would make them:
# claim-ca.{key,pem} and claim.{key,pem} in $work.
make_claim() {
  make_ca claim-ca "certfleet bench claim CA"
  ec_key "$work/claim.key"
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' \
    >"$work/claim.ext"
  issue claim "bench-claim" claim-ca
}

# Initializes companion state in $work/companion (sets state and config) and makes the
# claim CA its EST bootstrap trust.
init_companion() {
  state=$work/companion
  "$companion" init --state-dir "$state" >"$work/init.log" 2>&1 || { cat "$work/init.log" >&2; die "companion init failed"; }
  config=$state/companion.toml
  grep -q '^\[est\]$' "$config" || die "no [est] table in $config"
  # Keys go right after the [est] header (a key after a later table header would belong
  # to that table); an existing uncommented bootstrap_trust_file is replaced.
  sed -i -e '/^[[:space:]]*bootstrap_trust_file[[:space:]]*=/d' \
    -e "s|^\[est\]\$|[est]\nbootstrap_trust_file = \"$work/claim-ca.pem\"|" "$config"
}

# start_fleet_services: certfleetctl broker-config for $config into $work/broker (things
# listener $things_port, claim listener $claim_port), mosquitto on it, then the companion;
# waits until the companion's MQTT session shows in the broker log. Sets broker_pid,
# companion_pid and est_addr; writes the companion's CA to $work/companion-root.pem.
start_fleet_services() {
  "$ctl" --config "$config" broker-config --out "$work/broker" --port "$things_port" --claim-port "$claim_port" \
    >"$work/broker-config.log" 2>&1 || { cat "$work/broker-config.log" >&2; die "certfleetctl broker-config failed"; }
  "$ctl" --config "$config" ca cert >"$work/companion-root.pem"

  # mosquitto drops root privileges to its own user, which cannot read the temp
  # directory, so a root run keeps it as root.
  {
    if [[ $(id -u) -eq 0 ]]; then echo "user root"; fi
    cat "$work/broker/mosquitto.conf"
  } >"$work/broker-run.conf"
  mosquitto -c "$work/broker-run.conf" >"$work/broker.log" 2>&1 &
  broker_pid=$!
  pids+=("$broker_pid")
  wait_for "$work/broker.log" "Opening ipv[46] listen socket on port $claim_port" "$broker_pid" "$work/broker.log"

  "$companion" serve --config "$config" --est-listen 127.0.0.1:0 --ready-file "$work/ready" \
    >"$work/companion.log" 2>&1 &
  companion_pid=$!
  pids+=("$companion_pid")
  wait_for "$work/ready" '^127\.0\.0\.1:[0-9]+$' "$companion_pid" "$work/companion.log"
  # The companion has subscribed once its connection shows in the broker log.
  wait_for "$work/broker.log" "as certfleet-companion" "$companion_pid" "$work/companion.log"
  est_addr=$(<"$work/ready")
}
