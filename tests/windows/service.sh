#!/usr/bin/env bash
# The Windows agent as a Windows service, under Wine's Service Control
# Manager, streaming to a collector running natively on loopback:
# configure, service install, start (it connects and its snapshot reaches
# the collector), stop (the link closes with nothing unacknowledged),
# uninstall. Run by run.sh inside its network namespace:
#   service.sh AGENT_EXE NATIVE_BIN_DIR WORK_DIR
#
# The prefix is initialised before (run.sh's first step): `wineboot -i`
# in the same session as the test leaves two services.exe running, each
# with its own service database, and clients alternate between them.
set -euo pipefail
exe=$1 bin=$2 work=$3
data=$work/collector
port=17443
"$bin/vitals-collector" pki init --data-dir "$data" --host localhost > /dev/null
"$bin/vitals-collector" pki issue-agent ws-wine --data-dir "$data" > /dev/null
"$bin/vitals-collector" pki issue-specialist wine-test --role viewer --data-dir "$data" > /dev/null
cat > "$work/collector.toml" <<TOML
data_dir = "$data"
listen = "127.0.0.1:$port"
[metrics]
enabled = false
TOML
"$bin/vitals-collector" run --config "$work/collector.toml" > "$work/collector.log" 2>&1 &
collector=$!
# A session of its own: the previous step's server may still linger.
wineserver -k 2> /dev/null || true
wineserver -w
wineserver -p
cleanup() {
    wineserver -k 2> /dev/null || true
    kill "$collector" 2> /dev/null || true
}
trap cleanup EXIT
# One client first, alone: it starts the one services.exe.
wine sc query VitalsAgent > /dev/null 2>&1 || true

agent() {
    wine "$exe" "$@" 2>&1 | grep -v "^wine:"
    return "${PIPESTATUS[0]}"
}
pki=$data/pki
vitalsctl() {
    "$bin/vitalsctl" --collector "https://localhost:$port" --ca "$pki/ca.pem" \
        --cert "$pki/specialists/wine-test.pem" --key "$pki/specialists/wine-test.key" "$@"
}

echo "windows: configure and install the service"
agent configure --collector "https://localhost:$port" --ca "Z:$pki/ca.pem" \
    --cert "Z:$pki/agents/ws-wine.pem" --key "Z:$pki/agents/ws-wine.key"
agent service install
config=$WINEPREFIX/drive_c/ProgramData/Vitals
grep -q "^collector = \"https://localhost:$port\"" "$config/agent.toml"

echo "windows: start it; its snapshot must reach the collector"
agent service start
seen=
for _ in $(seq 60); do
    if vitalsctl -o json endpoints show ws-wine 2> /dev/null \
        | python3 -c 'import json,sys; s=json.load(sys.stdin).get("latest") or {}; sys.exit(0 if (s.get("host") or {}).get("os_name") == "Windows" else 1)' 2> /dev/null; then
        seen=yes
        break
    fi
    sleep 1
done
if [ -z "$seen" ]; then
    echo "windows: no Windows snapshot from the service reached the collector" >&2
    vitalsctl -o json endpoints show ws-wine >&2 || true
    cat "$config/logs/agent.log" >&2 || true
    exit 1
fi
agent service status | grep -q running

echo "windows: stop it; it closes the link with nothing left unacknowledged"
agent service stop
log=$config/logs/agent.log
grep -q "started by the Service Control Manager" "$log"
grep -q "the Service Control Manager asked to stop" "$log"
grep -q "link closed unacknowledged=0" "$log" || {
    echo "windows: the service stopped with messages not delivered" >&2
    cat "$log" >&2
    exit 1
}
agent service uninstall | grep -q "removed"
echo "windows: service passed"
