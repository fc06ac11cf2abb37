#!/usr/bin/env bash
# Footprint figures for BENCHMARKS.md: agent steady RSS and CPU under the
# quickstart, `vitals-agent once` wall time, collector start-up on a fresh
# data directory, and stripped binary sizes. Linux only (reads /proc).
#
#   tests/bench/footprint.sh [SECONDS]     # default 120
set -euo pipefail
cd "$(dirname "$0")/../.."
duration=${1:-120}
cargo build --release --workspace --quiet
bin="$PWD/target/release"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
now_ms() { date +%s%3N; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"

# Probes stay on this machine: no echo probes to the default gateway.
printf 'collector = "https://localhost:1"\nstate_dir = "s"\n[tls]\nca = "a"\ncert = "b"\nkey = "c"\n[network]\nping_gateway = false\n' > "$work/once.toml"

# 1. vitals-agent once (every probe once): wall time over 10 runs.
times=()
for _ in $(seq 10); do
  t0=$(now_ms); $bin/vitals-agent once --json --config "$work/once.toml" > /dev/null; t1=$(now_ms)
  times+=($((t1 - t0)))
done
echo "agent once wall ms (10 runs): ${times[*]}; median $(printf '%s\n' "${times[@]}" | median)"

# 2. Collector start-up on a fresh data directory, to accepting TCP.
starts=()
for i in $(seq 5); do
  d=$work/start$i
  $bin/vitals-collector pki init --data-dir "$d" --host localhost > /dev/null
  port=$((20000 + RANDOM % 20000))
  printf 'data_dir = "."\nlisten = "127.0.0.1:%s"\n[metrics]\nenabled = false\n' "$port" > "$d/collector.toml"
  t0=$(now_ms)
  $bin/vitals-collector run --config "$d/collector.toml" 2> /dev/null &
  pid=$!
  until (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; do sleep 0.002; done
  t1=$(now_ms)
  kill -TERM $pid; wait $pid || true
  starts+=($((t1 - t0)))
done
echo "collector start-up ms (fresh data dir, 5 runs): ${starts[*]}; median $(printf '%s\n' "${starts[@]}" | median)"

# 3. Agent steady state under the quickstart: 10 s snapshots, every probe
#    at its default interval (system 10 s, network 30 s, printers 30 s...).
port=$((20000 + RANDOM % 20000))
(cd "$work" && $bin/vitals-collector quickstart --listen "127.0.0.1:$port" \
  --metrics-listen 127.0.0.1:0 --no-gateway-probe > qs.out 2> qs.err) &
for _ in $(seq 100); do
  apid=$(pgrep -f "vitals-agent run --config $work" | head -1 || true)
  [ -n "$apid" ] && break; sleep 0.1
done
[ -n "$apid" ] || { echo "agent did not start"; cat "$work/qs.err"; exit 1; }
sleep 5   # past start-up
# utime + stime + the children it waited for (systemctl, smartctl).
ticks0=$(awk '{print $14 + $15 + $16 + $17}' /proc/$apid/stat); t0=$(now_ms)
rss=()
for _ in $(seq $((duration / 5))); do
  rss+=($(awk '/VmRSS/ {print $2}' /proc/$apid/status)); sleep 5
done
ticks1=$(awk '{print $14 + $15 + $16 + $17}' /proc/$apid/stat); t1=$(now_ms)
hz=$(getconf CLK_TCK)
peak=$(awk '/VmHWM/ {print $2}' /proc/$apid/status)
half=$(( ${#rss[@]} / 2 ))
steady=$(printf '%s\n' "${rss[@]:$half}" | median)
cpu=$(awk -v t="$((ticks1 - ticks0))" -v hz="$hz" -v ms="$((t1 - t0))" 'BEGIN {printf "%.3f", 100 * t / hz / (ms / 1000)}')
echo "agent over ${duration}s: steady RSS ${steady} KiB (median of 2nd half), peak RSS ${peak} KiB, CPU ${cpu}% of one core"
pkill -INT -f "vitals-collector quickstart --listen 127.0.0.1:$port" || true; wait || true

# 4. Stripped release binaries.
for b in vitals-agent vitals-collector vitalsctl; do
  echo "size $b: $(stat -c %s $bin/$b) bytes"
done
