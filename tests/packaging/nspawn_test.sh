#!/usr/bin/env bash
# The packages under a real systemd: a bookworm tree (debootstrap, cached under
# CACHE_DIR) booted with `systemd-nspawn --boot` as PID 1, without network of its own.
#   install both packages -> both services active (running), i.e. READY=1 was sent
#   the agent enrolls over EST against the companion inside the container
#   a stopped (SIGSTOP) agent is killed by the watchdog and restarted
#   an upgrade to NEW_DIST's packages keeps the state and an edited conffile, restarts the services
#   remove stops them; purge cleans up as docs/packaging.md says
# usage: nspawn_test.sh DIST NEW_DIST CACHE_DIR
# Exits 77 (a loud SKIPPED line first) when this machine cannot boot the container.
set -euo pipefail
DIST=$(cd "${1:?usage: $0 DIST NEW_DIST CACHE_DIR}" && pwd)
NEW_DIST=$(cd "${2:?}" && pwd)
CACHE=$(mkdir -p "${3:?}" && cd "$3" && pwd)
PASSED=0
FAILED=0
skip() { echo "SKIPPED: nspawn boot test: $*"; exit 77; }
pass() { PASSED=$((PASSED + 1)); echo "ok - $1"; }
fail() { FAILED=$((FAILED + 1)); echo "FAILED - $1"; }
check() {
  local name=$1; shift
  if "$@" >"$WORK/out" 2>&1; then pass "$name"; else fail "$name"; sed 's/^/    /' "$WORK/out" | tail -15; fi
}

[ "$(id -u)" -eq 0 ] || skip "needs root"
command -v systemd-nspawn >/dev/null || skip "systemd-nspawn is not installed (systemd-container)"
command -v debootstrap >/dev/null || skip "debootstrap is not installed"

# The base tree, made once: systemd, mosquitto and the libraries the packages link.
BASE=$CACHE/bookworm-root
if [ ! -x "$BASE/lib/systemd/systemd" ] || [ ! -e "$BASE/usr/lib/x86_64-linux-gnu/libcpp-httplib.so.0.11" ] ||
   [ ! -e "$BASE/usr/lib/x86_64-linux-gnu/libprometheus-cpp-core.so.1.0" ]; then
  rm -rf "$BASE.tmp"
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,mosquitto,libcurl4,libsqlite3-0,libmosquitto1,libssl3,libsystemd0,openssl,ca-certificates,procps,libtomlplusplus3,libcpp-httplib0.11,libprometheus-cpp-core1.0 \
    bookworm "$BASE.tmp" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 ||
    skip "debootstrap failed (no mirror?): $(tail -1 "$CACHE/debootstrap.log")"
  rm -rf "$BASE" && mv "$BASE.tmp" "$BASE"
fi

WORK=$(mktemp -d)
ROOT=$WORK/root
NSPAWN_PID=
cleanup() {
  [ -n "$NSPAWN_PID" ] && kill "$NSPAWN_PID" 2>/dev/null && wait "$NSPAWN_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
cp -a "$BASE" "$ROOT"
mkdir -p "$ROOT/debs/old" "$ROOT/debs/new"
cp "$DIST"/certfleet-agent_*.deb "$DIST"/certfleet-companion_*.deb "$ROOT/debs/old/"
cp "$NEW_DIST"/certfleet-agent_*.deb "$NEW_DIST"/certfleet-companion_*.deb "$ROOT/debs/new/"

systemd-nspawn -q -D "$ROOT" --register=no --keep-unit --private-network --boot >"$WORK/console.log" 2>&1 &
NSPAWN_PID=$!
LEADER=
for _ in $(seq 1 100); do
  LEADER=$(pgrep -P "$NSPAWN_PID" 2>/dev/null | head -1 || true)
  [ -n "$LEADER" ] && [ "$(cat /proc/"$LEADER"/comm 2>/dev/null)" = systemd ] && break
  kill -0 "$NSPAWN_PID" 2>/dev/null || break
  sleep 0.1
done
[ -n "$LEADER" ] && [ "$(cat /proc/"$LEADER"/comm 2>/dev/null)" = systemd ] ||
  skip "systemd-nspawn --boot did not start systemd as PID 1 here: $(tail -3 "$WORK/console.log" | tr '\n' ' ')"
c() { nsenter -t "$LEADER" -a -- /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
state=
for _ in $(seq 1 300); do
  state=$(c systemctl is-system-running 2>/dev/null || true)
  case $state in running|degraded) break ;; esac
  sleep 0.1
done
case $state in running|degraded) ;; *) skip "the container's systemd did not finish booting (state '$state')" ;; esac
echo "container booted (systemd as PID 1, system state $state)"

prop() { c systemctl show -P "$2" "$1"; }
active_running() { [ "$(prop "$1" ActiveState)/$(prop "$1" SubState)" = active/running ]; }
wait_until() {  # wait_until SECONDS COMMAND...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do [ $SECONDS -lt $deadline ] || return 1; sleep 0.2; done
}

# ---- install ----
check "install both packages" c sh -c 'dpkg -i /debs/old/*.deb' 
check "the users exist" c getent passwd _certfleet-agent _certfleet-companion
check "the companion's CA key directory is 0700" test "$(c stat -c %a /var/lib/certfleet-companion/keys)" = 700
check "certfleet-companion active (running) after READY=1" wait_until 30 active_running certfleet-companion
echo "companion status: $(prop certfleet-companion StatusText)"

# The agent: configured by hand, as an operator would, then started.
TOKEN=$(c runuser -u _certfleet-companion -- certfleetctl token create --serial gw-001 2>/dev/null)
c sh -c "certfleetctl --config /etc/certfleet/companion.toml ca cert >/etc/certfleet/trust-anchor.pem"
c sh -c "umask 077; printf '%s\n' '$TOKEN' >/etc/certfleet/agent-token && chown _certfleet-agent /etc/certfleet/agent-token"
c sed -i -e 's|^server = .*|server = "https://localhost:8443"|' /etc/certfleet/agent.toml
c sh -c 'cat >>/etc/certfleet/agent.toml <<TOML
# edited by the operator
TOML'
c sh -c "sed -i '/^\[est\]/a user = \"gw-001\"\npassword_file = \"/etc/certfleet/agent-token\"' /etc/certfleet/agent.toml"
c sh -c "sed -i '/^\[identity\]/a common_name = \"gw-001\"' /etc/certfleet/agent.toml"
c sh -c "grep -q '^\[mqtt\]' /etc/certfleet/agent.toml || printf '[mqtt]\ntimeout = \"1s\"\n' >>/etc/certfleet/agent.toml"
c mkdir -p /etc/systemd/system/certfleet-agent.service.d
c sh -c 'printf "[Service]\nWatchdogSec=4s\n" >/etc/systemd/system/certfleet-agent.service.d/test-watchdog.conf'
c systemctl daemon-reload
START=$(date +%s.%N)
check "certfleet-agent starts" c systemctl restart certfleet-agent
check "certfleet-agent active (running) after READY=1" wait_until 30 active_running certfleet-agent
check "the agent enrolled against the companion" wait_until 30 c test -s /var/lib/certfleet-agent/identity.pem
echo "agent status: $(prop certfleet-agent StatusText)"
t0=$(prop certfleet-agent ExecMainStartTimestampMonotonic)
t1=$(prop certfleet-agent ActiveEnterTimestampMonotonic)
echo "figure: agent start-to-READY in the container: $(( (t1 - t0) / 1000 )) ms (first start, enrollment included)"
c systemctl restart certfleet-agent
wait_until 30 active_running certfleet-agent || true
t0=$(prop certfleet-agent ExecMainStartTimestampMonotonic)
t1=$(prop certfleet-agent ActiveEnterTimestampMonotonic)
echo "figure: agent start-to-READY in the container: $(( (t1 - t0) / 1000 )) ms (restart, identity on disk)"
sleep 2
echo "figure: agent idle RSS in the container: $(c ps -o rss= -p "$(prop certfleet-agent MainPID)" | tr -d ' ') KiB"
check "the journal has the agent's structured fields" wait_until 10 c sh -c 'journalctl -u certfleet-agent -o verbose | grep -q "^ *THING=gw-001"'

# ---- watchdog ----
PID1=$(prop certfleet-agent MainPID)
R1=$(prop certfleet-agent NRestarts)
c kill -STOP "$PID1"
restarted() { [ "$(prop certfleet-agent NRestarts)" -gt "$R1" ] && active_running certfleet-agent && [ "$(prop certfleet-agent MainPID)" != "$PID1" ]; }
check "the watchdog restarts a stopped agent" wait_until 30 restarted

# ---- upgrade ----
CERT_BEFORE=$(c sha256sum /var/lib/certfleet-agent/identity.pem)
CA_BEFORE=$(c sha256sum /var/lib/certfleet-companion/ca/root.pem)
APID=$(prop certfleet-agent MainPID)
CPID=$(prop certfleet-companion MainPID)
check "upgrade to the newer packages" c sh -c 'DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold /debs/new/*.deb' 
check "the edited conffile is kept" c grep -q '^# edited by the operator' /etc/certfleet/agent.toml
check "the agent's identity is kept" test "$(c sha256sum /var/lib/certfleet-agent/identity.pem)" = "$CERT_BEFORE"
check "the companion's CA is kept" test "$(c sha256sum /var/lib/certfleet-companion/ca/root.pem)" = "$CA_BEFORE"
check "the agent was restarted" wait_until 30 sh -c "[ \"\$(nsenter -t $LEADER -a systemctl show -P MainPID certfleet-agent)\" != $APID ]"
check "the companion was restarted" wait_until 30 sh -c "[ \"\$(nsenter -t $LEADER -a systemctl show -P MainPID certfleet-companion)\" != $CPID ]"
check "both active (running) after the upgrade" wait_until 30 sh -c "$(declare -f c prop active_running); LEADER=$LEADER; active_running certfleet-agent && active_running certfleet-companion"

# ---- remove, purge ----
check "remove both packages" c dpkg -r certfleet-agent certfleet-companion
check "the agent is stopped" test "$(prop certfleet-agent ActiveState)" != active
check "the companion is stopped" test "$(prop certfleet-companion ActiveState)" != active
check "state is kept on remove" c test -s /var/lib/certfleet-agent/identity.pem
check "purge both packages" c dpkg -P certfleet-agent certfleet-companion
check "purge removed the agent's state" c test ! -e /var/lib/certfleet-agent
check "purge removed the companion's config" c test ! -e /etc/certfleet/companion.toml
check "purge kept the CA key (no purge-ca-key flag)" c test -s /var/lib/certfleet-companion/keys/root-ca.key.pem
check "purge removed the registry" c test ! -e /var/lib/certfleet-companion/registry.sqlite3

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
