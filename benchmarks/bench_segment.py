"""Time :func:`dsbprep.segment.segment_lungs` per stage for both methods, and peak memory.

Usage::

    python benchmarks/bench_segment.py [--data ../shared/data] [--case lidc-idri/LIDC-IDRI-0001]
                                       [--repeat 5] [--threads 0] [--slices 250]
                                       [--methods grt123,robust]

Runs on the real case (default LIDC-IDRI-0001) and on the same scan linearly interpolated
along z to ``--slices`` slices (a thin-slice scan of the same anatomy). For each volume:
one untimed warm-up run per method, ``--repeat`` rounds in which the methods run one after
the other (interleaved, so machine load hits both alike, in alternating order, so neither
always runs after the other; seconds per stage of each
method's fastest run, median and min of the totals, and the ratio of the medians robust /
grt123, goal <= 1.5, and of the fastest runs, which a shared machine's load disturbs
less), then one more run per method under ``tracemalloc`` (peak of numpy and
Python allocations made by the call) while a thread samples the process RSS (peak minus
the RSS before the call; the input volume is not counted in either). For reference,
grt123's own ``step1_python`` takes 25.2 s and 2.8-4.7 GB on this kind of machine
(``reference/PROVENANCE.md``). The data folder defaults to ``../shared/data`` beside the
repository, or the ``DSBPREP_SHARED_DATA`` environment variable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("DSBPREP_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_CASE = "lidc-idri/LIDC-IDRI-0001"
DEFAULT_REPEAT = 5
DEFAULT_SLICES = 250
# RSS sampling period of the memory run, seconds.
RSS_PERIOD_S = 0.002
STAGES = ("binarize", "select", "fill_holes", "split", "extract_main", "fill_2d_holes",
          "robust", "airways", "pathology")


def resample_z(hu: np.ndarray, spacing, slices: int) -> tuple[np.ndarray, tuple]:
    """Linear interpolation of an int16 volume along z to ``slices`` slices (same extent)."""
    nz = hu.shape[0]
    pos = np.linspace(0, nz - 1, slices)
    lo = np.minimum(np.floor(pos).astype(int), nz - 2)
    w = (pos - lo).astype(np.float32)[:, None, None]
    out = np.empty((slices,) + hu.shape[1:], dtype=np.int16)
    for i in range(0, slices, 16):  # in chunks: bounded float32 temporaries
        s = slice(i, min(i + 16, slices))
        a = hu[lo[s]].astype(np.float32)
        b = hu[lo[s] + 1].astype(np.float32)
        out[s] = np.rint(a + (b - a) * w[s]).astype(np.int16)
    dz = spacing[0] * (nz - 1) / (slices - 1)
    return out, (dz, spacing[1], spacing[2])


def peak_memory(fn) -> tuple[float, float]:
    """Run ``fn()``; return (tracemalloc peak MiB, RSS peak increase MiB)."""
    import psutil

    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(RSS_PERIOD_S)

    sampler = threading.Thread(target=sample, daemon=True)
    tracemalloc.start()
    sampler.start()
    try:
        fn()
    finally:
        stop.set()
        sampler.join()
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return traced / 2**20, (peak[0] - base) / 2**20


def bench(name: str, hu: np.ndarray, spacing, direction, repeat: int, threads: int,
          methods: tuple[str, ...]) -> None:
    from dsbprep.segment import segment_lungs

    def call(method):
        return segment_lungs(hu, spacing, direction=direction, threads=threads, method=method)

    masks = {m: call(m) for m in methods}  # warm-up
    runs: dict[str, list] = {m: [] for m in methods}
    for i in range(repeat):
        for method in methods[:: 1 if i % 2 == 0 else -1]:  # interleaved, order alternating
            start = time.perf_counter()
            masks[method] = call(method)
            runs[method].append((time.perf_counter() - start, masks[method].stages))
    print(f"{name}: shape {hu.shape}, spacing {tuple(round(float(s), 4) for s in spacing)}")
    medians = {}
    for method in methods:
        report_method(method, masks[method], runs[method])
        medians[method] = statistics.median(r[0] for r in runs[method])
    if {"grt123", "robust"} <= set(medians):
        fastest = {m: min(r[0] for r in runs[m]) for m in ("grt123", "robust")}
        print(f"  robust / grt123 (medians of {repeat} interleaved rounds): "
              f"{medians['robust'] / medians['grt123']:.2f}x (goal <= 1.5x); fastest runs: "
              f"{fastest['robust'] / fastest['grt123']:.2f}x")
    for method in methods:
        traced, rss = peak_memory(lambda m=method: call(m))
        print(f"  {method:7s} peak memory {traced:5.0f} MiB traced (tracemalloc), "
              f"{rss:.0f} MiB RSS increase")


def report_method(method: str, masks, runs) -> None:
    """Print one method's stages (fastest run) and totals."""
    best_total, best = min(runs, key=lambda r: r[0])
    totals = [r[0] for r in runs]
    print(f" {method}: found {masks.found} {masks.reason!r}")
    for stage in STAGES:
        if stage in best:
            print(f"  {stage:14s} {best[stage]:7.3f} s")
    print(
        f"  {'total':14s} {best_total:7.3f} s  (fastest of {len(runs)}; median "
        f"{statistics.median(totals):.3f} s, max {max(totals):.3f} s; "
        f"cut {best.get('cut_slices')}, erosions {best.get('erosions')})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder")
    parser.add_argument("--case", default=DEFAULT_CASE, help="series folder, relative to --data")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help="timed runs")
    parser.add_argument("--threads", type=int, default=0, help="threads (0: one per core)")
    parser.add_argument(
        "--slices",
        type=int,
        default=DEFAULT_SLICES,
        help="slices of the z-interpolated volume (0: skip it)",
    )
    parser.add_argument("--methods", default="grt123,robust",
                        help="comma-separated methods to time (grt123, robust)")
    args = parser.parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    folder = args.data / args.case
    if not folder.exists():
        print(f"bench_segment: {folder} does not exist (pass --data)", file=sys.stderr)
        return 2
    from dsbprep.dicom import load_scan

    scan = load_scan(folder)
    print(f"segment_lungs, threads={args.threads} ({os.cpu_count()} CPUs)")
    bench(Path(args.case).name, scan.hu, scan.spacing, scan.direction, args.repeat, args.threads,
          methods)
    if args.slices > 1:
        hu, spacing = resample_z(scan.hu, scan.spacing, args.slices)
        del scan
        bench(f"{args.slices}-slice interpolation", hu, spacing, None, args.repeat, args.threads,
              methods)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
