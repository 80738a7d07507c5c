"""Time :func:`dsbprep.dicom.load_scan` on a real series, and MetaImage/NIfTI/NRRD input against it.

Usage::

    python benchmarks/bench_load.py [--data ../shared/data] [--case lidc-idri/LIDC-IDRI-0001]
                                    [--repeat 5] [--formats]

Prints ``load_scan LIDC-IDRI-0001: 0.31 s (median of 5)`` (then min/max and shape), after one
untimed warm-up load (which fills the OS file cache, so the runs measure the loader, not the
disk). The data folder defaults to ``../shared/data`` beside the repository, or the
``DSBPREP_SHARED_DATA`` environment variable.

``--formats`` also writes the series as MetaImage (LUNA16's way: SimpleITK, int16 .mhd +
.raw), NIfTI (.nii.gz) and NRRD (gzip) into a temporary folder and times, in ``--repeat``
interleaved rounds (every input once per round, medians reported): the load
(:func:`dsbprep.io.volume.load_volume`) of each format, and the whole lung-source case
(load, segmentation, training volume: ``LungSource.process``) for DICOM and MetaImage.
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


def write_formats(folder: Path, out: Path) -> dict[str, Path]:
    """The series of ``folder`` as DICOM (itself), MetaImage, NIfTI and NRRD files in ``out``."""
    import SimpleITK as sitk

    from dsbprep.dicom import load_scan

    scan = load_scan(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(scan.source_files))
    image = sitk.Cast(reader.Execute(), sitk.sitkInt16)
    paths = {"DICOM": folder}
    for kind, name in (("MetaImage", "mhd"), ("NIfTI", "nii.gz"), ("NRRD", "nrrd")):
        paths[kind] = out / f"{scan.series_uid}.{name}"
        sitk.WriteImage(image, str(paths[kind]), useCompression=kind == "NRRD")
    return paths


def bench_formats(paths: dict[str, Path], rounds: int) -> dict[str, dict[str, float]]:
    """Median seconds per input of load_volume (all) and of the whole lung case (DICOM, MetaImage)."""
    from dsbprep.config import load_config
    from dsbprep.io.volume import load_volume
    from dsbprep.sources import Task, get_source

    source = get_source("lung", load_config(None))
    times: dict[str, dict[str, list[float]]] = {"load": {}, "case": {}}
    for _ in range(rounds):
        for kind, path in paths.items():
            start = time.perf_counter()
            load_volume(path)
            times["load"].setdefault(kind, []).append(time.perf_counter() - start)
        for kind in ("DICOM", "MetaImage"):
            key = "folder" if kind == "DICOM" else "volume"
            start = time.perf_counter()
            source.process(Task("c", "x", {key: str(paths[kind])}))
            times["case"].setdefault(kind, []).append(time.perf_counter() - start)
    return {what: {k: statistics.median(v) for k, v in d.items()} for what, d in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder")
    parser.add_argument("--case", default=DEFAULT_CASE, help="series folder, relative to --data")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help="timed runs (rounds)")
    parser.add_argument("--formats", action="store_true",
                        help="also time MetaImage, NIfTI and NRRD input against DICOM")
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
    if args.formats:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            paths = write_formats(folder, Path(tmp))
            result = bench_formats(paths, args.repeat)
        print(f"input formats, median of {args.repeat} interleaved rounds:")
        for what, label in (("load", "load_volume"), ("case", "lung case (load+segment+volume)")):
            dicom = result[what]["DICOM"]
            cells = [f"{k} {v:.2f} s ({v / dicom:.2f}x)" for k, v in result[what].items()]
            print(f"  {label}: " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
