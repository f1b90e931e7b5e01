#!/usr/bin/env python3
"""Splits a perf profile of shardspawn's own processes into costs per
delivery.

    perf script -F pid,tid,period,ip,sym -i perf.data \
        | bench/categorize.py --deliveries N [--cpu-us US]

Each sample is put in the first category (in the order below) whose
frames it holds, so a sample counts once. With --cpu-us (the bench's CPU
per delivery for the same point) the shares are turned into µs per
delivery.
"""
import argparse
import collections
import sys

# (category, [any of these substrings in some frame]); first match wins.
CATEGORIES = [
    ("spawn: clone, copy_process (new task; fd table with posix_spawn)",
     ["copy_process"]),
    ("spawn: vfork wait, context switches until the child execs",
     ["wait_for_completion_state", "__wait_for_common"]),
    ("spawn: child stack mmap/munmap (posix_spawn only)",
     ["__x64_sys_munmap", "__x64_sys_mmap", "__mmap", "__munmap"]),
    ("spawn: getrlimit in file actions, 7 a spawn (posix_spawn only)",
     ["getrlimit", "prlimit"]),
    ("spawn: rest of clone (sigprocmask, wake-up of the child)",
     ["__do_sys_clone", "clone3", "__spawni", "__spawnix", "posix_spawn",
      "clone (inlined)", "__clone"]),
    ("spawn: stage fds 3 and 4 with dup2, and back (Spawner only)",
     ["dup2", "Spawner::", "unstage"]),
    ("spawn: file actions, argv, CStrings (alloc/free)",
     ["spawn::spawn", "posix_spawn_file_actions"]),
    ("start: open + fstat message", ["openat", "statx", "fstat"]),
    ("start: pipe2 + fcntl O_NONBLOCK", ["pipe2", "fcntl"]),
    ("start: epoll_ctl add", ["epoll_ctl"]),
    ("start: close message and pipe write end", ["sys::start"]),
    ("start: other (pid map, slot)", ["Shard::start"]),
    ("reap: wait4, release_task", ["wait4"]),
    ("reap: signalfd, core", ["Shard::reap"]),
    ("output: read, EOF, close pipe", ["read_output"]),
    ("shard: read + decode jobs", ["read_jobs", "Shard::frame"]),
    ("shard: write results", ["Shard::flush"]),
    ("status files (once a second)", ["write_atomically", "publish"]),
    ("supervisor: read, check, route commands", ["Mux::read_commands"]),
    ("supervisor: read result frames", ["Mux::read_results"]),
    ("supervisor: write jobs", ["Mux::flush_jobs"]),
    ("supervisor: write records", ["Mux::flush_out"]),
    ("epoll_wait (both)", ["epoll_wait"]),
    ("core decisions", ["core::Core"]),
]


def samples(lines):
    head, frames = None, []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if head is not None:
                yield head, frames
            head, frames = None, []
        elif not line.startswith("\t") and not line.startswith(" "):
            head, frames = line.split(), []
        else:
            parts = line.strip().split(None, 1)
            frames.append(parts[1] if len(parts) > 1 else parts[0])
    if head is not None:
        yield head, frames


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--deliveries", type=int, default=0)
    ap.add_argument("--cpu-us", type=float, default=0.0)
    args = ap.parse_args()
    by = collections.Counter()
    by_pid = collections.Counter()
    total = 0
    for head, frames in samples(sys.stdin):
        period = int(head[1]) if len(head) > 1 else 1
        total += period
        by_pid[head[0].split("/")[0]] += period
        for name, keys in CATEGORIES:
            if any(k in f for f in frames for k in keys):
                by[name] += period
                break
        else:
            by["other: " + (frames[0] if frames else "?")] += period
    if not total:
        sys.exit("no samples")
    print("samples by pid: " + ", ".join(
        f"{p} {100 * n / total:.1f}%" for p, n in by_pid.most_common()))
    other = 0
    for name, n in by.most_common():
        share = n / total
        if name.startswith("other: ") and share < 0.01:
            other += n
            continue
        us = f"  {share * args.cpu_us:6.1f} µs" if args.cpu_us else ""
        print(f"{100 * share:5.1f}%{us}  {name}")
    if other:
        us = f"  {other / total * args.cpu_us:6.1f} µs" if args.cpu_us else ""
        print(f"{100 * other / total:5.1f}%{us}  other (each < 1%)")
    if args.deliveries:
        sec = total / 1e9
        print(f"sampled CPU {sec:.2f} s over {args.deliveries} deliveries: "
              f"{sec * 1e6 / args.deliveries:.1f} µs each (with perf's cost)")


main()
