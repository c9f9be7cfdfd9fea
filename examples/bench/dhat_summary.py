"""Summarizes a DHAT heap profile (valgrind --tool=dhat) of a benchmark run:
allocations per task, by the innermost frame that belongs to a crate of
interest (the framework first, then lapin/amq-protocol, tokio, serde_json).

    python3 examples/bench/dhat_summary.py bench-results/profile/worker.dhat.json 3100 [top]

The second argument is the number of tasks the run handled (blocks / tasks =
allocations per task). Startup allocations are included; they are few and
have their own sites, so the hot-path sites below are per task."""

import json
import re
import sys
from collections import defaultdict

OWNERS = [
    ("task_worker", re.compile(r"task_worker::")),
    ("task_core", re.compile(r"task_core::")),
    ("task_examples", re.compile(r"task_examples::")),
    ("lapin", re.compile(r"\blapin::")),
    ("amq_protocol", re.compile(r"amq_protocol(_types)?::")),
    ("tokio", re.compile(r"\btokio(_util)?::")),
    ("serde_json", re.compile(r"serde_json::")),
    ("futures", re.compile(r"futures_util::")),
]


def function_of(frame):
    # "0x1234: path::to::function (file.rs:12)" -> "path::to::function"
    text = frame.split(": ", 1)[-1]
    text = re.sub(r" \((in )?[^()]*\)$", "", text)
    return re.sub(r"::h[0-9a-f]{16}$", "", text)


def main():
    path, tasks = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    data = json.load(open(path))
    ftbl = data["ftbl"]
    by_site = defaultdict(lambda: [0, 0])
    by_owner = defaultdict(lambda: [0, 0])
    total_blocks = total_bytes = 0
    for pp in data["pps"]:
        blocks, size = pp["tbk"], pp["tb"]
        total_blocks += blocks
        total_bytes += size
        owner, site = "other", "?"
        for index in pp["fs"]:
            frame = ftbl[index]
            hit = next((name for name, rx in OWNERS if rx.search(frame)), None)
            if hit:
                owner, site = hit, function_of(frame)
                break
        by_site[(owner, site)][0] += blocks
        by_site[(owner, site)][1] += size
        by_owner[owner][0] += blocks
        by_owner[owner][1] += size
    print(f"{path}: {total_blocks:,} allocations, {total_bytes:,} bytes in all; "
          f"per task ({tasks:,} tasks): {total_blocks / tasks:.1f} allocations, "
          f"{total_bytes / tasks:,.0f} bytes")
    print("\nby crate of the innermost interesting frame (allocations/task, bytes/task):")
    for owner, (blocks, size) in sorted(by_owner.items(), key=lambda kv: -kv[1][0]):
        print(f"  {owner:<14} {blocks / tasks:8.1f} {size / tasks:10,.0f}")
    print(f"\ntop {top} allocation sites (allocations/task, bytes/task, share of allocations):")
    for (owner, site), (blocks, size) in sorted(by_site.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"  {blocks / tasks:7.1f} {size / tasks:9,.0f} {100 * blocks / total_blocks:5.1f}%  {site[:150]}")


if __name__ == "__main__":
    main()
