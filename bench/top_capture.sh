#!/usr/bin/env bash
# `shardspawn top` under tmux, during a `shardspawn simulate` run: prints
# a capture of its 80x24 screen, as the README's "Live view" section
# shows it. Needs tmux and `cargo build --release` first.
#
#   bench/top_capture.sh [SECONDS] [-- SIMULATE FLAGS...]
#
# SECONDS (default 12): how long into the run the screen is captured.
# simulate keeps its scratch qmail home under TMPDIR, so the script gives
# it a TMPDIR of its own and points top at that home's state directory.
set -euo pipefail
cd "$(dirname "$0")/.."

after=${1:-12}
shift || true
[ "${1:-}" = "--" ] && shift
flags=("$@")
if [ "${#flags[@]}" -eq 0 ]; then
  # 200 domains, each a strict receiver (a 421 at the greeting past 4
  # at once): adaptation lowers their limits, says which rule fired, and
  # the refusals are counted; d1.test gets the most mail.
  flags=(--messages 30000 --domains 200 --strict 4 --latency-ms 400
    --slots 600 --shards 2 --skew 0.8)
fi
bin=target/release
for b in shardspawn shardspawn-simulate; do
  [ -x "$bin/$b" ] || { echo "no $bin/$b: cargo build --release" >&2; exit 111; }
done
command -v tmux >/dev/null || { echo "no tmux" >&2; exit 111; }

scratch=$(mktemp -d)
sock="$scratch/tmux"
sim=
cleanup() {
  tmux -S "$sock" kill-server 2>/dev/null || true
  [ -n "$sim" ] && kill "$sim" 2>/dev/null && wait "$sim" 2>/dev/null
  rm -rf "$scratch"
}
trap cleanup EXIT

TMPDIR=$scratch "$bin/shardspawn" simulate "${flags[@]}" \
  >"$scratch/simulate.out" 2>&1 &
sim=$!
# top starts as soon as simulate has made its home, before shardspawn
# writes a status: it reads "not running" until then, and so sees the
# first refusals of the run between two refreshes.
home=
for _ in $(seq 200); do
  home=$(ls -d "$scratch"/*/ 2>/dev/null | head -n 1 || true)
  [ -n "$home" ] && break
  sleep 0.05
done
[ -n "$home" ] || { echo "simulate made no home" >&2; cat "$scratch/simulate.out" >&2; exit 111; }
state=${home%/}/state

tmux -S "$sock" -f /dev/null new-session -d -x 80 -y 24 -s top \
  "$PWD/$bin/shardspawn" top --state-dir "$state"
sleep "$after"
tmux -S "$sock" capture-pane -p -t top
tmux -S "$sock" send-keys -t top q
