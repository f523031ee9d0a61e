#!/usr/bin/env bash
# The systemd notify protocol of the real programs, without systemd: notify_harness.py
# binds a NOTIFY_SOCKET and records what the companion and the agent send. READY=1 only
# once serving (companion) or once the identity is loaded (agent), STATUS= lines,
# WATCHDOG=1 at half of WATCHDOG_USEC, RELOADING=1 then READY=1 on SIGHUP (an invalid
# config is refused and the old one kept), STOPPING=1 on SIGTERM. Prints the agent's
# start-to-READY time and idle resident memory.
source "$(dirname "$0")/lib.sh"
HARNESS=$HERE/notify_harness.py

cd "$WORK"
# wait_line FILE PATTERN SECONDS
wait_line() {
  local deadline=$((SECONDS + $3))
  until grep -q -- "$2" "$1" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "timed out waiting for '$2' in $1" >&2; return 1; }
    sleep 0.05
  done
}
count() { grep -c -- "$2" "$1" 2>/dev/null || true; }

# ---- companion ----
"$COMPANION" init --state-dir "$WORK/state" >/dev/null 2>&1
CONFIG=$WORK/state/companion.toml
set_config_key "$CONFIG" est listen '"127.0.0.1:0"'
mkdir c
python3 "$HARNESS" "$WORK/c" 2 -- "$COMPANION" serve --config "$CONFIG" --ready-file "$WORK/state/ready" \
  >>"$WORK/companion.log" 2>&1 &
PIDS+=($!)
HARNESS_C=$!
check "companion: READY=1 once listening" wait_line c/notify.log 'READY=1' 20
COMPANION_ADDR=$(cat "$WORK/state/ready")
check "companion: the address is bound when READY=1 arrives" curl -sS -k -o /dev/null "https://$COMPANION_ADDR/.well-known/est/cacerts"
check "companion: STATUS= says what it serves" grep -q "STATUS=serving EST on $COMPANION_ADDR" c/notify.log
CPID=$(cat c/pid)
before=$(count c/notify.log WATCHDOG=1)
check "companion: WATCHDOG=1 every second with WatchdogSec=2" wait_line <(sleep 2.5; cat c/notify.log) WATCHDOG=1 5
after=$(count c/notify.log WATCHDOG=1)
check "companion: at least two watchdog pings in 2.5 s" test $((after - before)) -ge 2
cp "$CONFIG" config.good
echo 'log_level = "loud"' >>"$CONFIG"
kill -HUP "$CPID"
check "companion: RELOADING=1 on SIGHUP" wait_line c/notify.log 'RELOADING=1' 10
check "companion: READY=1 again after the reload" wait_line <(grep -A100 RELOADING c/notify.log) 'READY=1' 1
check "companion: an invalid config is refused" wait_line companion.log 'configuration is not valid' 10
check "companion: still serving after the refused reload" curl -sS -k -o /dev/null "https://$COMPANION_ADDR/.well-known/est/cacerts"
cp config.good "$CONFIG"
"$CTL" --config "$CONFIG" ca cert >root.pem
TOKEN=$("$CTL" --config "$CONFIG" token create --serial gw-001 2>/dev/null)
printf '%s\n' "$TOKEN" >token.txt

# ---- agent ----
mkdir -p a gw
write_agent_toml info "$(free_port)" 1s >agent.toml
cat >>agent.toml <<TOML
[keystore]
dir = "$WORK/gw/keys"
TOML
python3 "$HARNESS" "$WORK/a" 2 -- "$AGENT" run --config agent.toml >>"$WORK/agent.log" 2>&1 &
PIDS+=($!)
HARNESS_A=$!
check "agent: READY=1" wait_line a/notify.log 'READY=1' 30
check "agent: the identity exists when READY=1 arrives" test -s gw/identity.pem
check "agent: STATUS= names the state and the thing" grep -q 'STATUS=active thing=gw-001' a/notify.log
APID=$(cat a/pid)
before=$(count a/notify.log WATCHDOG=1)
# Each tick retries the (absent) broker for up to mqtt.timeout = 1 s: pings stay within 2 s.
sleep 3.5
after=$(count a/notify.log WATCHDOG=1)
check "agent: at least two watchdog pings in 3.5 s from the daemon loop" test $((after - before)) -ge 2
READY_AT=$(grep -m1 'READY=1' a/notify.log | cut -d' ' -f1)
RSS_KB=$(ps -o rss= -p "$APID" | tr -d ' ')
echo "figure: agent start-to-READY ${READY_AT} s (first start: enrollment included)"
echo "figure: agent idle RSS ${RSS_KB} KiB"
sed -i 's/^jitter = .*//' agent.toml
printf '[renewal]\nthreshold = 0.5\n' >>agent.toml
kill -HUP "$APID"
check "agent: RELOADING=1 on SIGHUP" wait_line a/notify.log 'RELOADING=1' 10
check "agent: READY=1 again after the reload" wait_line <(grep -A100 RELOADING a/notify.log) 'READY=1' 5
check "agent: the reload was applied" wait_line agent.log 'configuration reloaded' 5
echo 'log_level = "loud"' >>agent.toml
kill -HUP "$APID"
check "agent: an invalid config is refused" wait_line agent.log 'configuration is not valid' 10
check "agent: still running after the refused reload" kill -0 "$APID"

# A second start, with the identity on disk: start-to-READY without enrollment.
kill -TERM "$APID"
check "agent: STOPPING=1 on SIGTERM" wait_line a/notify.log 'STOPPING=1' 10
rc=0; wait "$HARNESS_A" || rc=$?
check_eq "agent: exit status 0 after SIGTERM" 0 "$rc"
sed -i '/^log_level = "loud"/d' agent.toml
mkdir a2
python3 "$HARNESS" "$WORK/a2" 2 -- "$AGENT" run --config agent.toml >>"$WORK/agent.log" 2>&1 &
PIDS+=($!)
HARNESS_A=$!
check "agent: READY=1 on a restart" wait_line a2/notify.log 'READY=1' 20
echo "figure: agent start-to-READY $(grep -m1 'READY=1' a2/notify.log | cut -d' ' -f1) s (restart, identity on disk)"
kill -TERM "$(cat a2/pid)"
wait "$HARNESS_A" || true

kill -TERM "$CPID"
check "companion: STOPPING=1 on SIGTERM" wait_line c/notify.log 'STOPPING=1' 10
rc=0; wait "$HARNESS_C" || rc=$?
check_eq "companion: exit status 0 after SIGTERM" 0 "$rc"
finish
