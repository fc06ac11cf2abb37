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
root=$(cd "$(dirname "$0")/../.." && pwd)
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
source_key='HKLM\SYSTEM\CurrentControlSet\Services\EventLog\Application\Vitals Agent'
event_source() { wine reg query "$source_key" /v EventMessageFile 2> /dev/null | tr -d '\r' | grep -i "vitals-agent.exe"; }
event_source > /dev/null || { echo "windows: the event source was not registered" >&2; exit 1; }
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
if event_source > /dev/null; then
    echo "windows: the event source outlived the service" >&2
    exit 1
fi
echo "windows: service passed"

echo "windows: the installer, built with wixl"
stage=$work/msi
mkdir -p "$stage"
cp "$exe" "$root/deploy/windows/agent.toml" "$root/deploy/windows/vitals-agent.wxs" "$stage/"
for version in 0.1.0 0.1.1; do
    (cd "$stage" && wixl -a x64 -D Version=$version -o vitals-agent-$version.msi vitals-agent.wxs)
done
msi=$stage/vitals-agent-0.1.0.msi
msiinfo export "$msi" ServiceInstall | grep -q "VitalsAgent.*LocalSystem.*run --config"
msiinfo export "$msi" CustomAction | grep -q "configure --config"
files=$(msiextract -l "$msi")
echo "$files" | grep -qx "Vitals/vitals-agent.exe"
echo "$files" | grep -qx "Vitals/agent.toml.example"

echo "windows: msiexec /i on a fresh desk, with the collector and the desk's files as properties"
rm -rf "$config"
connected() { grep -c "connected collector=" "$config/logs/agent.log" 2> /dev/null || echo 0; }
wait_connected() {
    for _ in $(seq 60); do
        [ "$(connected)" -ge "$1" ] && return 0
        sleep 1
    done
    echo "windows: the installed service did not connect ($1)" >&2
    cat "$config/logs/agent.log" >&2 || true
    return 1
}
wine msiexec /i "Z:$msi" /qn COLLECTOR="https://localhost:$port" CA="Z:$pki/ca.pem" \
    CERT="Z:$pki/agents/ws-wine.pem" KEY="Z:$pki/agents/ws-wine.key"
installed_exe="$WINEPREFIX/drive_c/Program Files/Vitals/vitals-agent.exe"
[ -f "$installed_exe" ]
agent service status | grep -q running
event_source | grep -qi 'Program Files.Vitals.vitals-agent.exe' || {
    echo "windows: the installer did not register the event source" >&2
    exit 1
}
wait_connected 1
grep -q "^collector = \"https://localhost:$port\"" "$config/agent.toml"

echo "windows: msiexec /i of a newer version upgrades in place, keeping configuration and state"
echo "# set by hand at this desk" >> "$config/agent.toml"
[ -d "$config/state" ]
wine msiexec /i "Z:$stage/vitals-agent-0.1.1.msi" /qn
agent service status | grep -q running
wait_connected 2
grep -q "^# set by hand at this desk" "$config/agent.toml"
grep -q "^collector = \"https://localhost:$port\"" "$config/agent.toml"
[ -f "$config/pki/agent.key" ] && [ -d "$config/state" ]

echo "windows: msiexec /x removes the program and the service, and leaves the desk's files"
wine msiexec /x "Z:$stage/vitals-agent-0.1.1.msi" /qn
if agent service status > /dev/null 2>&1; then
    echo "windows: the service is still registered after /x" >&2
    exit 1
fi
# The service reports "stopped" a moment before its process has exited and
# released the program file; give the removal that moment, then insist.
for _ in $(seq 10); do
    [ -e "$installed_exe" ] || break
    sleep 1
done
if [ -e "$installed_exe" ]; then
    echo "windows: the program is still installed 10 s after /x" >&2
    exit 1
fi
if event_source > /dev/null; then
    echo "windows: the event source outlived the uninstall" >&2
    exit 1
fi
[ -f "$config/agent.toml" ] && [ -f "$config/pki/agent.key" ] || {
    echo "windows: /x took the desk's configuration or key with it" >&2
    exit 1
}

echo "windows: msiexec /i with TOKEN=: the service enrolls at its first start, its key made on the desk"
rm -rf "$config"
token=$("$bin/vitals-collector" tokens --config "$work/collector.toml" create --uses 1 --tag wine 2> /dev/null)
wine msiexec /i "Z:$msi" /qn COLLECTOR="https://localhost:$port" TOKEN="$token"
wait_connected 1
grep -q "enrolled as" "$config/logs/agent.log" || {
    echo "windows: the service did not say it enrolled" >&2
    exit 1
}
[ -f "$config/pki/agent.key" ] && [ -f "$config/pki/agent.pem" ] && [ ! -e "$config/enroll.token" ]
vitalsctl endpoints list | grep -q online
enrolled=$(vitalsctl -o json endpoints list | python3 -c 'import json,sys; print(sum(1 for e in json.load(sys.stdin) if "wine" in e.get("enrolled_tags", [])))')
[ "$enrolled" = 1 ] || { echo "windows: no endpoint enrolled with the token's tag" >&2; exit 1; }
wine msiexec /x "Z:$msi" /qn
echo "windows: installer passed"
