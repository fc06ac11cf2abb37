#!/usr/bin/env bash
# Builds the vitals-agent and vitals-collector .deb packages from release
# binaries, with dpkg-deb (no debhelper needed):
#
#   cargo build --release -p vitals-agent -p vitals-collector --bins
#   deploy/debian/build.sh [VERSION]     # default: the workspace version
#
# The packages land in target/debian/.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
here="$root/deploy/debian"
version="${1:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)}"
bin="${VITALS_BIN_DIR:-$root/target/release}"
out="$root/target/debian"
arch="$(dpkg --print-architecture)"
mkdir -p "$out"

# package NAME DESCRIPTION DEPENDS
stage() {
    local name=$1
    local dir="$out/stage/$name"
    rm -rf "$dir"
    mkdir -p "$dir/DEBIAN" "$dir/usr/bin" "$dir/lib/systemd/system" \
        "$dir/etc/vitals" "$dir/usr/share/doc/$name"
    install -m 0644 "$root/README.md" "$dir/usr/share/doc/$name/README.md"
    for script in postinst prerm postrm; do
        install -m 0755 "$here/$name/$script" "$dir/DEBIAN/$script"
    done
    install -m 0644 "$here/$name/$name.service" "$dir/lib/systemd/system/$name.service"
    echo "$dir"
}

finish() {
    local name=$1 description=$2 depends=$3 dir=$4
    local size
    size=$(du -sk "$dir" | cut -f1)
    cat > "$dir/DEBIAN/control" <<CONTROL
Package: $name
Version: $version
Architecture: $arch
Maintainer: Vitals <vitals@city.example>
Installed-Size: $size
Depends: $depends
Section: admin
Priority: optional
Homepage: https://github.com/vitals/vitals
Description: $description
CONTROL
    (cd "$dir" && find etc -type f | sed 's|^|/|' > DEBIAN/conffiles)
    dpkg-deb -Zgzip --root-owner-group --build "$dir" "$out/${name}_${version}_${arch}.deb" > /dev/null
    echo "$out/${name}_${version}_${arch}.deb"
}

dir=$(stage vitals-agent)
install -m 0755 "$bin/vitals-agent" "$dir/usr/bin/vitals-agent"
install -m 0644 "$here/vitals-agent/agent.toml" "$dir/etc/vitals/agent.toml"
finish vitals-agent "Vitals workstation agent
 Watches hardware, OS, printer and network health and streams it to the
 Vitals collector over mutual TLS. Enrolls with a token at first start." \
    "adduser, libc6" "$dir"

dir=$(stage vitals-collector)
install -m 0755 "$bin/vitals-collector" "$dir/usr/bin/vitals-collector"
install -m 0755 "$bin/vitalsctl" "$dir/usr/bin/vitalsctl"
install -m 0644 "$root/deploy/collector.toml" "$dir/etc/vitals/collector.toml"
finish vitals-collector "Vitals collector
 Receives workstation health from Vitals agents, raises help-desk tickets
 and serves live diagnostics, the web console and enrollment." \
    "adduser, libc6, util-linux" "$dir"
rm -rf "$out/stage"
