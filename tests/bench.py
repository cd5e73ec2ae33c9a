"""Benchmarks: `python tests/bench.py` measures the shop against baselines run on the same machine
in the same run, and prints a markdown table (figure, shop, baseline, ratio, goal).

Loopback only, standard library plus the shop's own dependencies. Absolute times drift on shared
machines; the ratios are what to compare. `--only NAME[,NAME]` runs some of them; `--quick` runs
each with less load (a smoke run, not for the README).
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from harness import Context, table  # noqa: E402


ORDER = ["catalog", "bot", "burst", "delivery", "checkout", "ipn", "memory", "growth", "litestream"]


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def benchmarks():
    """name -> function(Context) -> [Row], in the order of the README's table."""
    import bench_web
    import bench_bot
    import bench_growth

    found = {}
    for module in (bench_web, bench_bot, bench_growth):
        found.update(module.BENCHMARKS)
    return {name: found[name] for name in ORDER if name in found}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated names: " + ", ".join(ORDER),
    )
    parser.add_argument("--quick", action="store_true", help="less load: a smoke run")
    args = parser.parse_args(argv)
    chosen = benchmarks()
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in chosen]
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
        chosen = {n: chosen[n] for n in wanted}
    rows, started = [], time.monotonic()
    for name, fn in chosen.items():
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            result = fn(Context(Path(tmp), args.quick))
        rows += result
        print(f"# {name}: {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
        for r in result:
            print(
                f"#   {r.figure}: {r.shop} vs {r.baseline} ({r.ratio}) goal {r.goal} met {r.met}",
                file=sys.stderr,
                flush=True,
            )
    print(f"Machine: {machine()}; whole run {time.monotonic() - started:.0f} s\n")
    print(table(rows))
    return 0 if all(r.met != "no" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
