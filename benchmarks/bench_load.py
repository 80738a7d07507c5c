"""Time :func:`dsbprep.dicom.load_scan` on a real series (default LIDC-IDRI-0001).

Usage::

    python benchmarks/bench_load.py [--data ../shared/data] [--case lidc-idri/LIDC-IDRI-0001]
                                    [--repeat 5]

Prints ``load_scan LIDC-IDRI-0001: 0.31 s (median of 5)`` (then min/max and shape), after one
untimed warm-up load (which fills the OS file cache, so the runs measure the loader, not the
disk). The data folder defaults to ``../shared/data`` beside the repository, or the
``DSBPREP_SHARED_DATA`` environment variable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("DSBPREP_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_CASE = "lidc-idri/LIDC-IDRI-0001"
DEFAULT_REPEAT = 5


def bench(folder: Path, repeat: int) -> tuple[float, list[float], tuple[int, ...]]:
    """Load ``folder`` once untimed, then ``repeat`` times; return (median s, times, shape)."""
    from dsbprep.dicom import load_scan

    shape = load_scan(folder).hu.shape
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        load_scan(folder)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, shape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder")
    parser.add_argument("--case", default=DEFAULT_CASE, help="series folder, relative to --data")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help="timed runs")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    folder = args.data / args.case
    if not folder.exists():
        print(f"bench_load: {folder} does not exist (pass --data)", file=sys.stderr)
        return 2
    median, times, shape = bench(folder, args.repeat)
    print(f"load_scan {Path(args.case).name}: {median:.2f} s (median of {args.repeat})")
    print(f"  min {min(times):.3f} s, max {max(times):.3f} s, shape {shape}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
