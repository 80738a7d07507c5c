"""Time the whole per-case work of the lung build, and the speed-up of 2 workers.

Usage::

    python benchmarks/bench_build.py [--data ../shared/data] [--cases 4] [--repeat 3]

1. One process, LIDC-IDRI-0001: seconds for each stage (load_scan, segment_lungs,
   prepare_lung_volume, nodule boxes + append to an HDF5 file) and in total,
   median of ``--repeat`` runs after a warm-up; compared with the 31 s the
   original grt123 code takes for this case on this kind of machine (measured
   once, see ../shared/data/reference/PROVENANCE.md; not re-run here).
2. Throughput: ``python -m dsbprep.build`` (a fresh process each) of ``--cases`` patients (LIDC-IDRI-0001 linked
   under that many patient names) with ``--workers 1`` and then ``--workers 2``,
   in this one run; prints cases/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("DSBPREP_SHARED_DATA", REPO.parent / "shared" / "data"))
#: grt123's preprocessing of LIDC-IDRI-0001 on a 2-core machine (reference/PROVENANCE.md).
GRT123_SECONDS = 31.0


def per_case_stages(folder: Path, out: Path, repeat: int) -> dict[str, float]:
    """Median seconds per stage of one case, computed in this process."""
    import numpy as np

    from dsbprep.config import load_config
    from dsbprep.dicom import load_scan
    from dsbprep.geometry import voxel_to_world
    from dsbprep.preprocess import prepare_lung_volume
    from dsbprep.segment import segment_lungs
    from dsbprep.sources import Task
    from dsbprep.sources.lung import LungSource
    from dsbprep.store import DatasetWriter

    src = LungSource.from_config(load_config(REPO / "config.ini"))
    runs: dict[str, list[float]] = {}
    for i in range(repeat + 1):  # the first run warms caches and imports, not timed
        t = {}
        t0 = time.perf_counter()
        scan = load_scan(folder, **src.dicom)
        t["load_scan"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        masks = segment_lungs(scan.hu, scan.spacing, direction=scan.direction, **src.segmentation)
        t["segment_lungs"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        tv = prepare_lung_volume(scan.hu, scan.spacing, masks.left, masks.right, **src.preprocess)
        t["prepare_lung_volume"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        origin = voxel_to_world(tv.original_index(np.zeros(3)), scan.origin, scan.spacing, scan.direction)
        src._boxes(str(folder), scan, tv, origin)
        t["nodule boxes"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        case = src.process(Task(f"c{i}", "x", {"folder": str(folder)}))  # the whole thing once more...
        t_whole = time.perf_counter() - t0
        t0 = time.perf_counter()
        with DatasetWriter(out, image_dtype="uint8", pad_value=170) as w:
            w.append(case)
        t["append to HDF5"] = time.perf_counter() - t0
        t["total (process + append)"] = t_whole + t["append to HDF5"]
        if i:
            for k, v in t.items():
                runs.setdefault(k, []).append(v)
    return {k: statistics.median(v) for k, v in runs.items()}


def throughput(folder: Path, n_cases: int, workers: int, tmp: Path, threads: int = 0) -> float:
    """Cases per second of ``python -m dsbprep.build`` over ``n_cases`` linked copies of ``folder``.

    Each build runs in a fresh process, as a user runs it, so a 1-worker build (in the
    main process) and a 2-worker build (loky processes) both pay their start-up.
    """
    import subprocess

    data = tmp / "in"
    if not data.exists():
        data.mkdir(parents=True)
        for i in range(n_cases):
            (data / f"P{i:03d}").symlink_to(folder, target_is_directory=True)
    ini = tmp / f"threads{threads}.ini"
    ini.write_text(f"[segmentation]\nthreads = {threads}\n")
    out = tmp / f"w{workers}-t{threads}.h5"
    cmd = [sys.executable, "-m", "dsbprep.build", "--config", str(ini), "--data_directory", str(data),
           "--output_filename", str(out), "--workers", str(workers), "--report", "", "--no-progress"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    if done.returncode != 0 or f"built {n_cases}," not in done.stdout:
        raise RuntimeError(f"build failed: {done.stdout}\n{done.stderr}")
    return n_cases / seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--cases", type=int, default=4, help="patients in the throughput build")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of the per-case stages")
    args = p.parse_args(argv)
    folder = args.data / "lidc-idri" / "LIDC-IDRI-0001"
    if not folder.exists():
        print(f"bench_build: {folder} does not exist (pass --data)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stages = per_case_stages(folder, tmp / "stages.h5", args.repeat)
        print(f"per-case work, LIDC-IDRI-0001 (133 x 512 x 512), one process, median of {args.repeat}:")
        for k, v in stages.items():
            print(f"  {k:28s} {v:6.2f} s")
        total = stages["total (process + append)"]
        print(f"  grt123 original: {GRT123_SECONDS:.0f} s -> speed-up {GRT123_SECONDS / total:.1f}x")
        one_all = throughput(folder, args.cases, 1, tmp / "a", threads=0)
        one = throughput(folder, args.cases, 1, tmp / "c", threads=1)
        two = throughput(folder, args.cases, 2, tmp / "b", threads=0)
        print(f"build of {args.cases} cases: 1 worker with 1 thread {one:.3f} cases/s, "
              f"2 workers {two:.3f} cases/s: ratio {two / one:.2f}x")
        print(f"  (1 process whose segmentation uses both cores, the default for --workers 1: "
              f"{one_all:.3f} cases/s; 2 workers / that = {two / one_all:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
