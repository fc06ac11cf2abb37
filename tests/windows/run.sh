#!/usr/bin/env bash
# Builds the Windows agent on this Linux machine with Debian's compiler
# (the standard library built from source) and tests it under Wine, inside
# network namespaces of its own so nothing leaves the machine:
#   - the agent's unit tests and command-line tests, run under Wine;
#   - `vitals-agent.exe once --json`: a Windows snapshot with drives,
#     adapters, the SCM's services and a printer queue the test created
#     (Wine's spooler lists a private CUPS scheduler's queues), the
#     gateway measured, and no fault the machine does not have;
#   - a pending-reboot marker set in the registry is reported, and clears;
#   - the agent as a Windows service and its installer
#     (tests/windows/service.sh).
#
#   tests/windows/run.sh            build and test
#   tests/windows/run.sh --build    build only
#
# Needs root (for the namespaces) and the Debian packages rustc-web,
# cargo-web, rust-web-src, gcc-mingw-w64-x86-64, wine, wine64, wixl and
# msitools, and CUPS (cups-daemon, cups-client).
set -euo pipefail

cd "$(dirname "$0")/../.."
root=$PWD
target_dir=${VITALS_WINDOWS_TARGET_DIR:-$root/target/windows}
triple=x86_64-pc-windows-gnu
out=$target_dir/$triple/debug

for tool in /usr/bin/rustc /usr/bin/cargo x86_64-w64-mingw32-gcc wine ip python3 wixl msiinfo msiextract cupsd lpadmin; do
    command -v "$tool" >/dev/null || {
        echo "windows: $tool not found (apt-get install rustc-web cargo-web rust-web-src gcc-mingw-w64-x86-64 wine wine64 wixl msitools cups-daemon cups-client)" >&2
        exit 1
    }
done

windows_cargo() {
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
    CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc \
        /usr/bin/cargo "$@" --locked -Zbuild-std --target "$triple" \
        -p vitals-agent --target-dir "$target_dir"
}

started=$(date +%s)
echo "windows: building vitals-agent.exe and its unit tests for $triple"
windows_cargo build --bin vitals-agent
test_exes=$(windows_cargo test --lib --test cli --no-run --message-format=json \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["kind"][0], m["executable"])')
tests_exe=$(echo "$test_exes" | awk '$1 == "lib" { print $2 }')
cli_exe=$(echo "$test_exes" | awk '$1 == "test" { print $2 }')
[ -n "$tests_exe" ] && [ -n "$cli_exe" ] || { echo "windows: test executables not found" >&2; exit 1; }
echo "windows: built in $(( $(date +%s) - started )) s"

# Stand-ins for what Wine 8.0 lacks (test scaffolding, never shipped):
# ProcessPrng for Rust's std, and performance counters for sysinfo.
for dll in bcryptprimitives pdh; do
    x86_64-w64-mingw32-gcc -O2 -shared -o "$out/$dll.dll" \
        "tests/windows/$dll.c" "tests/windows/$dll.def" -ladvapi32
    cp "$out/$dll.dll" "$(dirname "$tests_exe")/"
done
[ "${1:-}" = --build ] && exit 0

work=$(mktemp -d)
# Wine runs in a network namespace of its own with a veth link to a
# gateway namespace (10.250.0.1, which answers pings and refuses TCP):
# the agent's gateway probe is exercised, and nothing leaves the machine.
desk=vitals-wdesk-$$ gw=vitals-wgw-$$
cleanup() {
    ip netns del "$desk" 2> /dev/null || true
    ip netns del "$gw" 2> /dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$desk"
ip netns add "$gw"
ip link add vwgw0 netns "$gw" type veth peer name vwdesk0 netns "$desk"
ip -n "$gw" addr add 10.250.0.1/24 dev vwgw0
ip -n "$desk" addr add 10.250.0.2/24 dev vwdesk0
for ns in "$gw" "$desk"; do ip -n "$ns" link set lo up; done
ip -n "$gw" link set vwgw0 up
ip -n "$desk" link set vwdesk0 up
ip -n "$desk" route add default via 10.250.0.1
export WINEPREFIX=$work/prefix WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml=;pdh=n,b"
cat > "$work/agent.toml" <<TOML
collector = "https://localhost:1"
state_dir = "state"
[tls]
ca = "ca.pem"
cert = "agent.pem"
key = "agent.key"
[probes]
smart = { enabled = false }
[printers]
cups = ""
TOML
# A private CUPS scheduler with one queue: Wine's print spooler lists the
# scheduler's queues, so the agent must report it as a spooler printer.
cups=$work/cups
mkdir -p "$cups"/{spool,cache,state,tmp,log}
chmod 1777 "$cups/tmp"
cups_port=10631
cat > "$cups/cupsd.conf" <<CONF
Listen 127.0.0.1:$cups_port
LogLevel warn
WebInterface No
Browsing Off
DefaultAuthType None
<Location />
  Order allow,deny
  Allow all
</Location>
<Location /admin>
  Order allow,deny
  Allow all
</Location>
<Policy default>
  <Limit All>
    Order deny,allow
  </Limit>
</Policy>
CONF
cat > "$cups/cups-files.conf" <<CONF
ServerRoot $cups
RequestRoot $cups/spool
CacheDir $cups/cache
StateDir $cups/state
TempDir $cups/tmp
AccessLog $cups/log/access_log
ErrorLog $cups/log/error_log
PageLog $cups/log/page_log
User lp
Group lp
Sandboxing Relaxed
CONF
export CUPS_SERVER=127.0.0.1:$cups_port
# Each step starts the scheduler in the desk's namespace and stops it
# after.
in_namespace() {
    ip netns exec "$desk" sh -c "cd '$work' &&
        { cupsd -f -c '$cups/cupsd.conf' -s '$cups/cups-files.conf' & cupsd=\$!; } &&
        for i in \$(seq 100); do lpstat -r 2>/dev/null | grep -q 'scheduler is running' && break; sleep 0.1; done &&
        lpadmin -p WineFrontDesk -E -v ipp://127.0.0.1:10999/ipp/print &&
        { $1; status=\$?; kill \$cupsd; wait \$cupsd 2>/dev/null; exit \$status; }"
}
in_namespace "wineboot -i >/dev/null 2>&1 || true"
# The stand-ins into the prefix's system folder too, for the agent the
# installer puts under Program Files (this test prefix only).
cp "$out/bcryptprimitives.dll" "$out/pdh.dll" "$WINEPREFIX/drive_c/windows/system32/"

echo "windows: the agent's unit tests under Wine"
in_namespace "wine '$tests_exe' --test-threads 2"

echo "windows: the agent's command-line tests under Wine"
in_namespace "wine '$cli_exe' --test-threads 2"

echo "windows: vitals-agent.exe once --json under Wine"
in_namespace "wine '$out/vitals-agent.exe' once --json --config agent.toml" > "$work/once.json"
# The native agent on the same machine, in the same namespace: a fault it
# raises too (a host disk that is really nearly full) is the machine's.
# (and the collector and vitalsctl for the service test below, in one build).
cargo build --locked -q -p vitals-agent -p vitals-collector --bin vitals-agent --bin vitals-collector --bin vitalsctl
in_namespace "'$root/target/debug/vitals-agent' once --json --config agent.toml" > "$work/native.json"
python3 - "$work/once.json" "$work/native.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
native = {f["check_id"] for f in json.load(open(sys.argv[2]))["faults"]}
s = d["snapshot"]
faults = [(f["check_id"], f["subject"]) for f in d["faults"]]
print("windows: os", s["host"].get("os_name"), "| cores", s["cpu"].get("logical_cores"),
      "| memory", s["memory"].get("total_bytes"),
      "| disks", [d["mount_point"] for d in s["disks"]],
      "| interfaces", [i["name"] for i in s["interfaces"]],
      "| printers", [(p["name"], p["source"], p["state"]) for p in s["printers"]],
      "| services checked", s["os"].get("services_checked"),
      "| failed services", s["os"].get("failed_services"))
for e in s.get("probe_errors", []):
    print("windows: probe error:", e["probe"], e["message"])
print("windows: faults", faults)
problems = []
if s["host"].get("os_name") != "Windows":
    problems.append("the OS is not Windows")
if not s["cpu"].get("logical_cores") or not s["memory"].get("total_bytes"):
    problems.append("no CPU cores or memory")
if not any(d["mount_point"] == "C:\\" and d["total_bytes"] > 0 for d in s["disks"]):
    problems.append("no C: drive with a size")
if not any("127.0.0.1/8" in i["addresses"] for i in s["interfaces"]):
    problems.append("no loopback adapter with its address")
if not any(p["name"] == "WineFrontDesk" and p["source"] == "spooler" for p in s["printers"]):
    problems.append("the queue the test created is not among the spooler's printers")
gw = s["network"].get("gateway") or {}
print("windows: gateway", gw)
if gw.get("address") != "10.250.0.1" or not gw.get("received"):
    problems.append("the gateway was not measured")
if not s["os"].get("services_checked"):
    problems.append("the Service Control Manager was not read")
if s.get("probe_errors"):
    problems.append("probe errors")
# Nothing listens at the placeholder collector; any other fault must be
# one the native agent sees on this machine too.
false = [f for f in faults
         if f != ("service_unreachable", "collector (localhost:1)") and f[0] not in native]
if native - {"service_unreachable"}:
    print("windows: faults the machine has (the native agent raises them too):", sorted(native))
if false:
    problems.append(f"faults the machine does not have: {false}")
if problems:
    sys.exit("windows: " + "; ".join(problems))
PY
echo "windows: a pending reboot marked in the registry, then cleared"
wu='HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired'
reboot_state() {
    in_namespace "wine '$out/vitals-agent.exe' once --json --config agent.toml" \
        | python3 -c 'import json,sys; o=json.load(sys.stdin)["snapshot"]["os"]; print(o["reboot_required"], "|", "; ".join(o["reboot_reasons"]))'
}
in_namespace "wine reg add '$wu' /f >/dev/null 2>&1"
marked=$(reboot_state)
echo "windows: marked: $marked"
case "$marked" in
    "True | "*"Windows Update"*) ;;
    *) echo "windows: the Windows Update marker was not reported" >&2; exit 1 ;;
esac
in_namespace "wine reg delete '$wu' /f >/dev/null 2>&1"
cleared=$(reboot_state)
echo "windows: cleared: $cleared"
case "$cleared" in
    "False | "*) ;;
    *) echo "windows: the pending reboot did not clear" >&2; exit 1 ;;
esac
echo "windows: the agent as a Windows service, streaming to a collector on loopback"
mkdir -p "$work/service"
in_namespace "bash '$root/tests/windows/service.sh' '$out/vitals-agent.exe' '$root/target/debug' '$work/service'"
echo "windows: passed"
