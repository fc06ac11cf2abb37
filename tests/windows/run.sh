#!/usr/bin/env bash
# Builds the Windows agent on this Linux machine with Debian's compiler
# (std built from source) and runs it under Wine, inside a network
# namespace of its own so nothing leaves the machine.
#
#   tests/windows/run.sh            build, then `once --json` under Wine
#   tests/windows/run.sh --build    build only
#
# Needs root (for the namespace) and the Debian packages rustc-web,
# cargo-web, rust-web-src, gcc-mingw-w64-x86-64, wine and wine64.
set -euo pipefail

cd "$(dirname "$0")/../.."
root=$PWD
target_dir=${VITALS_WINDOWS_TARGET_DIR:-$root/target/windows}
triple=x86_64-pc-windows-gnu
out=$target_dir/$triple/debug

for tool in /usr/bin/rustc /usr/bin/cargo x86_64-w64-mingw32-gcc wine; do
    command -v "$tool" >/dev/null || {
        echo "windows: $tool not found (apt-get install rustc-web cargo-web rust-web-src gcc-mingw-w64-x86-64 wine wine64)" >&2
        exit 1
    }
done

echo "windows: building vitals-agent for $triple"
RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc \
    /usr/bin/cargo build --locked -Zbuild-std --target "$triple" \
    -p vitals-agent --bin vitals-agent --target-dir "$target_dir"

# Stand-ins for what Wine 8.0 lacks (test scaffolding, never shipped).
for dll in bcryptprimitives pdh; do
    x86_64-w64-mingw32-gcc -O2 -shared -o "$out/$dll.dll" \
        "tests/windows/$dll.c" "tests/windows/$dll.def" -ladvapi32
done
[ "${1:-}" = --build ] && exit 0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
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
echo "windows: vitals-agent.exe once --json under Wine (loopback only)"
unshare -n sh -c "ip link set lo up && cd '$work' && wineboot -i >/dev/null 2>&1; \
    wine '$out/vitals-agent.exe' once --json --config agent.toml" > "$work/once.json"
python3 - "$work/once.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
s = d["snapshot"]
print("windows: os", s["host"].get("os_name"), "| disks", len(s["disks"]),
      "| interfaces", len(s["interfaces"]), "| probe errors", len(s["probe_errors"]))
print("windows: faults", [(f["check_id"], f["subject"]) for f in d["faults"]])
for e in s["probe_errors"]:
    print("windows: probe error:", e["probe"], e["message"])
print("windows: cpu cores", s["cpu"].get("logical_cores"), "| memory", s["memory"].get("total_bytes"),
      "| printers", len(s["printers"]), "| os section", s["os"])
PY
