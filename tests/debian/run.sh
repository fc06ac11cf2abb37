#!/usr/bin/env bash
# The Linux packages, built and exercised as an IT department would:
#   - both .deb packages built from release binaries (deploy/debian/build.sh),
#     at 0.1.0 and 0.1.1;
#   - their systemd units checked with `systemd-analyze verify`;
#   - installed with dpkg: accounts, folders, owners and modes, conffiles;
#   - the collector started as its unit would (its own account), a token
#     made; the agent installed with that token in /etc/vitals/enroll.token,
#     the unit's ExecStartPre run, the agent started as its unit would: it
#     enrolls by itself (its key made on the desk, readable by its account
#     only), connects, and the token file is gone;
#   - upgraded to 0.1.1: a hand edit of agent.toml, the key and the state
#     stay, and the agent reconnects;
#   - removed (state kept) and purged (state gone).
#
# Needs root. It installs the packages on this machine and purges them at
# the end; no systemd is needed (none runs here).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
[ "$(id -u)" = 0 ] || { echo "debian: needs root (dpkg -i)" >&2; exit 1; }

fail() { echo "FAIL debian: $*" >&2; exit 1; }
step() { echo "-- $*"; }
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
    wait 2> /dev/null || true
    dpkg -P vitals-agent vitals-collector > /dev/null 2>&1 || true
    rm -f /etc/vitals/enroll.token
}
trap cleanup EXIT

if [ -z "${VITALS_DEB_PREBUILT:-}" ]; then
    step "release binaries"
    cargo build --release --locked -p vitals-agent -p vitals-collector --bins 2>&1 | tail -1
fi
step "packages 0.1.0 and 0.1.1"
deploy/debian/build.sh 0.1.0
deploy/debian/build.sh 0.1.1
deb=target/debian
arch=$(dpkg --print-architecture)
for p in vitals-agent vitals-collector; do
    dpkg-deb --info "$deb/${p}_0.1.0_${arch}.deb" > /dev/null
    contents=$(dpkg-deb --contents "$deb/${p}_0.1.0_${arch}.deb")
    grep -q "lib/systemd/system/$p.service" <<< "$contents" || fail "$p: no unit in the package"
    grep -q "usr/bin/$p" <<< "$contents" || fail "$p: no binary in the package"
done

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
metrics=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

step "install the collector"
dpkg -i "$deb/vitals-collector_0.1.0_${arch}.deb" > /dev/null
getent passwd vitals > /dev/null || fail "no vitals account"
[ "$(stat -c '%U %a' /var/lib/vitals-collector)" = "vitals 700" ] || fail "data dir owner/mode: $(stat -c '%U %a' /var/lib/vitals-collector)"
[ "$(stat -c '%U %a' /var/lib/vitals-collector/pki/ca.key)" = "vitals 600" ] || fail "CA key owner/mode"
grep -q '^/etc/vitals/collector.toml$' /var/lib/dpkg/info/vitals-collector.conffiles || fail "collector.toml not a conffile"
systemd-analyze verify /lib/systemd/system/vitals-collector.service || fail "collector unit"
sed -i "s|^listen = \"0.0.0.0:7443\"|listen = \"127.0.0.1:$port\"|; s|^listen = \"127.0.0.1:9464\"|listen = \"127.0.0.1:$metrics\"|" /etc/vitals/collector.toml
grep -q "127.0.0.1:$port" /etc/vitals/collector.toml || fail "listen not set"
runuser -u vitals -- /usr/bin/vitals-collector check-config --config /etc/vitals/collector.toml
runuser -u vitals -- /usr/bin/vitals-collector run --config /etc/vitals/collector.toml > /tmp/vitals-deb-collector.log 2>&1 &
pids+=($!)
token=$(runuser -u vitals -- /usr/bin/vitals-collector tokens create --config /etc/vitals/collector.toml --uses 1 --site north --tag deb 2> /dev/null)
[ -n "$token" ] || fail "no token"
runuser -u vitals -- /usr/bin/vitals-collector pki issue-specialist deb-admin --role admin --data-dir /var/lib/vitals-collector > /dev/null
spec=/var/lib/vitals-collector/pki/specialists
ctl() {
    /usr/bin/vitalsctl --collector "https://127.0.0.1:$port" --server-name localhost \
        --ca /var/lib/vitals-collector/pki/ca.pem --cert "$spec/deb-admin.pem" --key "$spec/deb-admin.key" "$@"
}

step "install the agent with a token"
install -m 0600 /dev/stdin /etc/vitals/enroll.token <<< "$token"
dpkg -i "$deb/vitals-agent_0.1.0_${arch}.deb" > /dev/null
getent passwd vitals-agent > /dev/null || fail "no vitals-agent account"
for d in /var/lib/vitals-agent /var/lib/vitals-agent/pki /var/lib/vitals-agent/state; do
    [ "$(stat -c '%U %a' "$d")" = "vitals-agent 700" ] || fail "$d owner/mode: $(stat -c '%U %a' "$d")"
done
grep -q '^/etc/vitals/agent.toml$' /var/lib/dpkg/info/vitals-agent.conffiles || fail "agent.toml not a conffile"
systemd-analyze verify /lib/systemd/system/vitals-agent.service || fail "agent unit"
# The administrator's edits (a conffile): this collector, and no echo
# probes to this machine's real gateway from the test.
sed -i "s|^collector = .*|collector = \"https://127.0.0.1:$port\"\nserver_name = \"localhost\"|" /etc/vitals/agent.toml
printf '\n[probes]\nnetwork = { enabled = false }\n' >> /etc/vitals/agent.toml
start_agent() {
    pre=$(sed -n 's/^ExecStartPre=+//p' /lib/systemd/system/vitals-agent.service)
    eval "$pre"
    runuser -u vitals-agent -- /usr/bin/vitals-agent run --config /etc/vitals/agent.toml >> /tmp/vitals-deb-agent.log 2>&1 &
    agent_pid=$!
    pids+=($agent_pid)
}
start_agent
host_id=$(hostname | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9._-]/-/g')
for _ in $(seq 1 60); do
    ctl endpoints list 2> /dev/null | grep -q "online" && break
    sleep 0.5
done
ctl endpoints show "$host_id" | grep -q "^State      online" || { cat /tmp/vitals-deb-agent.log; fail "the enrolled agent is not online"; }
ctl endpoints show "$host_id" | grep -q "site north, tags deb" || fail "site and tags not applied"
[ ! -e /etc/vitals/enroll.token ] && [ ! -e /var/lib/vitals-agent/enroll.token ] || fail "the token file stayed"
[ "$(stat -c '%U %a' /var/lib/vitals-agent/pki/agent.key)" = "vitals-agent 600" ] || fail "agent key owner/mode"
key_sum=$(sha256sum /var/lib/vitals-agent/pki/agent.key)
state_files=$(ls /var/lib/vitals-agent/state)
[ -n "$state_files" ] || fail "no agent state"

step "upgrade to 0.1.1"
kill "$agent_pid"; wait "$agent_pid" 2> /dev/null || true
grep -q 'network = { enabled = false }' /etc/vitals/agent.toml || fail "edit missing before upgrade"
dpkg -i --force-confold "$deb/vitals-agent_0.1.1_${arch}.deb" > /dev/null
[ "$(dpkg-query -W -f '${Version}' vitals-agent)" = 0.1.1 ] || fail "not upgraded"
grep -q 'network = { enabled = false }' /etc/vitals/agent.toml || fail "the hand edit was lost"
[ "$(sha256sum /var/lib/vitals-agent/pki/agent.key)" = "$key_sum" ] || fail "the key changed"
[ "$(ls /var/lib/vitals-agent/state)" = "$state_files" ] || fail "state lost"
start_agent
for _ in $(seq 1 60); do
    ctl endpoints show "$host_id" 2> /dev/null | grep -q "^State      online" && break
    sleep 0.5
done
ctl endpoints show "$host_id" | grep -q "^State      online" || fail "not back after the upgrade"
kill "$agent_pid"; wait "$agent_pid" 2> /dev/null || true

step "remove, then purge"
dpkg -r vitals-agent > /dev/null
[ ! -e /usr/bin/vitals-agent ] || fail "binary left after remove"
[ -e /var/lib/vitals-agent/pki/agent.key ] || fail "remove took the state"
[ -e /etc/vitals/agent.toml ] || fail "remove took the conffile"
dpkg -P vitals-agent > /dev/null
[ ! -e /var/lib/vitals-agent ] || fail "purge left the state"
[ ! -e /etc/vitals/agent.toml ] || fail "purge left the conffile"
kill "${pids[0]}"; wait "${pids[0]}" 2> /dev/null || true
dpkg -P vitals-collector > /dev/null
[ ! -e /var/lib/vitals-collector ] || fail "purge left the collector's data"
echo "debian: ok (built, verified, installed, enrolled, upgraded, removed, purged)"
