#!/bin/sh
# First start on an empty volume: the fleet CA and a server certificate for
# the names in VITALS_HOSTS (space-separated; localhost always, for the
# health check). Then the collector, as PID 1's only child.
set -eu
data=/var/lib/vitals-collector
if [ ! -f "$data/pki/ca.key" ]; then
    hosts=""
    for h in ${VITALS_HOSTS:-} localhost; do hosts="$hosts --host $h"; done
    # shellcheck disable=SC2086
    /usr/bin/vitals-collector pki init --data-dir "$data" $hosts
fi
exec /usr/bin/vitals-collector run --config "${VITALS_COLLECTOR_CONFIG:-/etc/vitals/collector.toml}"
