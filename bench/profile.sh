#!/bin/sh
# Profiles shardspawn's own processes (supervisor and shards) while
# shardspawn-bench drives one measurement point: syscall counts per
# delivery (perf stat on the syscall tracepoints) and a CPU profile
# (perf record, kernel and user stacks). Needs perf and root (or
# perf_event_paranoid <= 1).
#
#   bench/profile.sh [IN_FLIGHT [SHARDS [SECONDS]]]
#
# Writes to target/profile-IN_FLIGHT-SHARDS/: syscalls.txt (per
# syscall: count in the window; clone or clone3 = deliveries), costs.txt (the
# profile split into costs by bench/categorize.py), report.txt (flat, by
# symbol), children.txt (CPU by command and binary, children included)
# and the perf data.
set -eu
in_flight=${1:-100}
shards=${2:-1}
seconds=${3:-10}
cd "$(dirname "$0")/.."
out=target/profile-$in_flight-$shards
mkdir -p "$out"
cargo build --release --quiet
./target/release/shardspawn-bench --no-baselines --in-flight "$in_flight" \
    --shards "$shards" --framing 2 --deliveries 60000 --rounds 1 --out "$out/bench" \
    >"$out/bench.txt" 2>&1 &
bench=$!
# The supervisor is `shardspawn` with the bench as parent; shards are
# `shardspawn shard ...` with the supervisor as parent.
sup=
while [ -z "$sup" ]; do
    sleep 0.2
    sup=$(pgrep -P "$bench" -x shardspawn || true)
done
sleep 2
pids=$(printf '%s' "$sup"; for p in $(pgrep -P "$sup"); do printf ',%s' "$p"; done)
echo "profiling supervisor and shards: $pids for $seconds s"
# --no-inherit: their own syscalls and CPU, not their children's.
perf stat --no-inherit -e 'syscalls:sys_enter_*' -p "$pids" \
    -o "$out/syscalls.raw" -- sleep "$seconds" || true
perf record --no-inherit -F 1999 --call-graph dwarf,16384 -p "$pids" \
    -o "$out/perf.data" -- sleep "$seconds" 2>/dev/null || true
# With the children, by command: a child runs as `shardspawn` (the shard's
# name) from clone to exec, then as `shardspawn-fake`.
perf record -F 2999 -g -p "$pids" -o "$out/perf-children.data" \
    -- sleep "$seconds" 2>/dev/null || true
wait "$bench" || true
# Deliveries in the stat window = spawns = clone or clone3 calls.
grep -v ' 0 ' "$out/syscalls.raw" | sort -k1 -n -r >"$out/syscalls.txt"
perf report -i "$out/perf.data" --no-children --sort sym -g none --stdio \
    2>/dev/null | grep -v '^$' | head -80 >"$out/report.txt"
cpu_us=$(tr '\r' '\n' <"$out/bench.txt" \
    | sed -n 's/.* \([0-9.]*\) µs CPU\/delivery.*/\1/p' | tail -1)
perf script -i "$out/perf.data" -F pid,tid,period,ip,sym 2>/dev/null \
    | python3 bench/categorize.py --cpu-us "${cpu_us:-0}" >"$out/costs.txt"
perf report -i "$out/perf-children.data" --no-children --sort comm,dso -g none \
    --stdio 2>/dev/null | grep -v '^$' | head -40 >"$out/children.txt"
echo "wrote $out/costs.txt $out/syscalls.txt $out/report.txt $out/children.txt"
