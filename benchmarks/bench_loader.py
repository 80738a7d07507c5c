"""How fast does the loader feed patches? (issue 5, "Speed").

Usage::

    python benchmarks/bench_loader.py [--quick] [--data ../shared/data] [--input FILE.h5]
                                      [--cases 8] [--patches 160] [--no-torchio] [--no-tuning]

The dataset: grt123's preprocessed LIDC-IDRI-0001 volume (``reference/grt123-LIDC-IDRI-0001.npz``
``clean``: HU windowed to uint8, 1 mm, lung crop (270, 205, 267)) and variants of it (flips,
shifts, +-noise) as separate cases, with a left/right lung mask (voxels grt123 did not fill with
170). Without the shared data, realistic synthetic lung-like volumes of that size are used;
``--input`` benchmarks the cases of an existing dsbprep file instead (e.g. ``make dataset``'s
output). The output says which.

Measured, for 96^3 and 128^3 patches with random flips (z, y, x) + rot90 on, batches of 8,
float32 images + uint8 masks (MB/s counts those output bytes):

(a)  patches cut from the volumes already in memory as numpy arrays (same sampler, same
     augmentation, same output arrays), every patch from a freshly drawn case and position;
(b1) the BatchLoader reading the HDF5 file, one process (also a fresh case and position per patch);
(b2) the BatchLoader through a PyTorch DataLoader with 1 and 2 workers (``PatchStream``, batches
     handed over in its ring of shared slots); also with uint8 batches (``dtype="image"``, what
     a GPU run should use: the consumer converts on the GPU);
(c)  TorchIO's Queue (UniformSampler, samples_per_volume=16, RandomFlip) over the same volumes
     saved as uncompressed NIfTI, Queue workers 1 and 2.

(a) and (b1) run in alternating rounds and the median round is reported, so load from other
processes hits both alike. CPU-ms/patch (this process and its DataLoader workers, from psutil)
is printed beside each rate: unlike wall-clock rates it hardly changes when other processes
compete for the cores, so it shows what each path costs on a busy machine. Then the file layout is tuned: chunk shapes x compressions x chunk
cache sizes, (b1) patches/s and file size against the uncompressed arrays.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dsbprep.augment import Compose, Flip, Rot90  # noqa: E402
from dsbprep.loader import BatchLoader  # noqa: E402
from dsbprep.patches import CaseInfo, UniformSampler  # noqa: E402
from dsbprep.store import CaseData, DatasetWriter, open_dataset  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("DSBPREP_SHARED_DATA", REPO.parent / "shared" / "data"))
REFERENCE = "reference/grt123-LIDC-IDRI-0001.npz"
PAD = 170  # grt123's value outside the lungs
LUNG_CROP_SHAPE = (270, 205, 267)  # the LIDC-IDRI-0001 lung crop at 1 mm
BATCH = 8
PATCHES = (96, 128)
ROUNDS = 5
#: DataLoader prefetch per worker, and PatchStream's shared slots per worker for it
#: (prefetch + the batch the consumer holds + one spare: workers never wait for a slot).
PREFETCH = 4
SLOTS_PER_WORKER = PREFETCH + 2
TORCHIO_SAMPLES_PER_VOLUME = 16
#: Layout used for the main comparison (the recommendation of docs/LOADER.md).
MAIN_LAYOUT = ("blosc-lz4", (64, 64, 64))
MIB = 1024**2


# -- data ------------------------------------------------------------------------------


def lidc_variants(npz: Path, n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` cases from the real clean volume: flips, shifts and noise of it."""
    clean = np.load(npz)["clean"][0]
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        v = clean
        if k & 1:
            v = v[:, :, ::-1]
        if k & 2:
            v = v[::-1]
        v = np.roll(v, int(rng.integers(-8, 9)), axis=0)
        if k >= 4:
            noise = rng.normal(0, 3, v.shape)
            v = np.where(v == PAD, PAD, np.clip(v + noise, 0, 255)).astype(np.uint8)
        v = np.ascontiguousarray(v)
        mask = (v != PAD).astype(np.uint8)
        mask[:, :, : v.shape[2] // 2] *= 2  # right lung (low x) = 2, left = 1
        out.append((v, mask))
    return out


def synthetic_cases(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Lung-like uint8 volumes of the lung-crop size: two ellipsoid lungs, noise, pad 170."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = LUNG_CROP_SHAPE
    z, y, x = np.ogrid[:nz, :ny, :nx]
    out = []
    for _ in range(n):
        mask = np.zeros(LUNG_CROP_SHAPE, np.uint8)
        for label, cx in ((2, 0.28 * nx), (1, 0.72 * nx)):
            r = ((z - nz / 2) / (0.48 * nz)) ** 2 + ((y - ny / 2) / (0.45 * ny)) ** 2
            mask[r + ((x - cx) / (0.22 * nx)) ** 2 < 1] = label
        v = np.where(mask > 0, rng.normal(60, 25, mask.shape), PAD)
        out.append((np.clip(v, 0, 255).astype(np.uint8), mask))
    return out


def file_cases(path: Path, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    with open_dataset(path) as ds:
        return [(ds[i].image, ds[i].mask) for i in range(min(n, len(ds)))]


def write_h5(path: Path, cases, compression: str, chunks) -> float:
    with DatasetWriter(path, compression=compression, chunks=chunks, pad_value=PAD) as w:
        for k, (v, m) in enumerate(cases):
            w.append(CaseData(f"case{k:02d}", v, m))
    return path.stat().st_size


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its live children (DataLoader workers)."""
    import psutil

    proc = psutil.Process()
    total = sum(proc.cpu_times()[:2])
    for child in proc.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


class Rate(float):
    """Patches per second, with the CPU milliseconds spent per patch (all processes)."""

    cpu_ms: float | None = None


def rate_of(done: int, wall: float, cpu: float | None) -> Rate:
    r = Rate(done / wall)
    r.cpu_ms = None if cpu is None else 1e3 * cpu / done
    return r


# -- (a) in memory ------------------------------------------------------------------------


def run_in_memory(cases, patch: int, n: int, seed: int) -> float:
    """Patches/s of cutting + augmenting from in-memory arrays into float32 batches."""
    aug = Compose([Flip(), Rot90()])
    sampler = UniformSampler()
    infos = [CaseInfo(v.shape) for v, _ in cases]
    size = (patch,) * 3
    rng = np.random.default_rng(seed)
    images = np.empty((BATCH, 1, *size), np.float32)
    masks = np.empty((BATCH, 1, *size), np.uint8)
    start, cpu = time.perf_counter(), cpu_seconds()
    for k in range(n):
        c = int(rng.integers(len(cases)))
        origin = sampler.origin(infos[c], size, rng)
        sl = tuple(slice(int(o), int(o) + patch) for o in origin)
        image, mask, _ = aug.apply(cases[c][0][sl], cases[c][1][sl], None, aug.draw(rng))
        images[k % BATCH, 0] = image
        masks[k % BATCH, 0] = mask
    return rate_of(n, time.perf_counter() - start, cpu_seconds() - cpu)


# -- (b) BatchLoader ------------------------------------------------------------------------


def make_loader(
    path: Path, patch: int, *, cache_bytes: int = 64 * MIB, seed: int = 0, dtype: str = "float32"
) -> BatchLoader:
    return BatchLoader(
        path,
        patch_size=(patch,) * 3,
        batch_size=BATCH,
        augment=Compose([Flip(), Rot90()]),
        seed=seed,
        epochs=None,
        cache_bytes=cache_bytes,
        dtype=dtype,
    )


def run_loader(loader: BatchLoader, n: int) -> float:
    """Patches/s of the loader in this process (warm handle; every patch a fresh case visit)."""
    it = iter(loader)
    next(it)  # open the file, read the index
    done, start, cpu = 0, time.perf_counter(), cpu_seconds()
    while done < n:
        done += len(next(it))
    return rate_of(done, time.perf_counter() - start, cpu_seconds() - cpu)


def run_torch(loader: BatchLoader, n: int, workers: int) -> float | None:
    try:
        from torch.utils.data import DataLoader

        from dsbprep.adapters.torch import PatchStream
    except ImportError:
        return None
    dl = DataLoader(
        PatchStream(loader, slots=max(workers, 1) * SLOTS_PER_WORKER),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=PREFETCH if workers else None,
    )
    it = iter(dl)
    # Workers started and warm: every worker has written each of its shared slots once
    # (the first write of a slot in a fresh worker pays its page faults).
    for _ in range(max(workers, 1) * SLOTS_PER_WORKER):
        next(it)
    done, start, cpu = 0, time.perf_counter(), cpu_seconds()
    while done < n:
        done += len(next(it)["index"])
    rate = rate_of(done, time.perf_counter() - start, cpu_seconds() - cpu)
    del it
    return rate


# -- (c) TorchIO --------------------------------------------------------------------------


def run_torchio(folder: Path, cases, patch: int, n: int, workers: int) -> float | None:
    try:
        import nibabel as nib
        import torch
        import torchio as tio
    except ImportError:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    subjects = []
    for k, (v, m) in enumerate(cases):
        img, lab = folder / f"case{k:02d}.nii", folder / f"case{k:02d}_mask.nii"
        if not img.exists():
            # NIfTI is x, y, z: store the z-y-x arrays transposed, 1 mm voxels.
            nib.save(nib.Nifti1Image(np.ascontiguousarray(v.T), np.eye(4)), img)
            nib.save(nib.Nifti1Image(np.ascontiguousarray(m.T), np.eye(4)), lab)
        subjects.append(tio.Subject(image=tio.ScalarImage(img), mask=tio.LabelMap(lab)))
    dataset = tio.SubjectsDataset(subjects, transform=tio.RandomFlip(axes=(0, 1, 2)))
    queue = tio.Queue(
        dataset,
        max_length=4 * TORCHIO_SAMPLES_PER_VOLUME,
        samples_per_volume=TORCHIO_SAMPLES_PER_VOLUME,
        sampler=tio.data.UniformSampler(patch),
        num_workers=workers,
    )
    loader = torch.utils.data.DataLoader(queue, batch_size=BATCH, num_workers=0)
    # Whole queue epochs, loading included: a queue is pre-filled, so timing a few batches
    # after a warm-up would measure only the draining of patches already loaded.
    epochs = max(1, -(-n // len(queue)))
    done, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            done += len(batch["image"][tio.DATA])
    return rate_of(done, time.perf_counter() - start, None)


# -- report -------------------------------------------------------------------------------


def fmt(rate: float | None, patch: int) -> str:
    if rate is None:
        return "n/a (torch/torchio not installed)"
    mb = rate * patch**3 * (4 + 1) / 1e6
    cpu = getattr(rate, "cpu_ms", None)
    cpu_text = f" {cpu:6.1f} CPU-ms/patch" if cpu is not None else ""
    return f"{rate:7.1f} patches/s {mb:7.0f} MB/s{cpu_text}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases, patches and variants")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder")
    parser.add_argument(
        "--input", type=Path, help="benchmark the cases of this dsbprep file instead"
    )
    parser.add_argument(
        "--cases", type=int, help="cases in the benchmark dataset (default 8, quick 4)"
    )
    parser.add_argument(
        "--patches", type=int, help="patches per measurement (default 160, quick 96)"
    )
    parser.add_argument("--no-torchio", action="store_true", help="skip (c)")
    parser.add_argument("--no-tuning", action="store_true", help="skip the layout tuning table")
    args = parser.parse_args(argv)
    n_cases = args.cases or (4 if args.quick else 8)
    n = args.patches or (96 if args.quick else 160)
    rounds = 3 if args.quick else ROUNDS

    if args.input is not None:
        cases = file_cases(args.input, n_cases)
        source = f"{len(cases)} cases of {args.input}"
    elif (args.data / REFERENCE).exists():
        cases = lidc_variants(args.data / REFERENCE, n_cases)
        source = (
            f"{n_cases} cases: grt123's clean LIDC-IDRI-0001 lung crop {cases[0][0].shape} uint8 "
            "and flipped/shifted/noisy variants of it (real data)"
        )
    else:
        cases = synthetic_cases(n_cases)
        source = (
            f"{n_cases} SYNTHETIC lung-like uint8 volumes {LUNG_CROP_SHAPE} (no shared data found)"
        )
    raw = sum(v.nbytes + m.nbytes for v, m in cases)
    print(f"dataset: {source}; {raw / 1e6:.0f} MB as uncompressed arrays (image + mask)")
    print(
        f"cpus: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}; batches of {BATCH}, "
        "flips + rot90; MB/s = float32 image + uint8 mask output bytes"
    )

    work = Path(tempfile.mkdtemp(prefix="dsbprep-bench-"))
    try:
        comp, chunks = MAIN_LAYOUT
        main_file = work / "main.h5"
        size = write_h5(main_file, cases, comp, chunks)
        print(
            f"main file: {comp}, chunks {chunks}: {size / 1e6:.0f} MB ({size / raw:.2f} x the arrays)"
        )
        for patch in PATCHES:
            a_rates, b_rates = [], []
            for r in range(rounds):
                # A fresh seed per round: no round re-reads the chunks of the previous one.
                a_rates.append(run_in_memory(cases, patch, n, seed=r))
                with make_loader(main_file, patch, seed=r) as loader:
                    b_rates.append(run_loader(loader, n))
            a, b1 = statistics.median(a_rates), statistics.median(b_rates)
            b_w1 = run_torch(make_loader(main_file, patch, seed=11), n, 1)
            b_w2 = run_torch(make_loader(main_file, patch, seed=12), n, 2)
            u_w2 = run_torch(make_loader(main_file, patch, seed=13, dtype="image"), n, 2)
            c1 = c2 = None
            if not args.no_torchio:
                c1 = run_torchio(work / "nifti", cases, patch, n, 1)
                c2 = run_torchio(work / "nifti", cases, patch, n, 2)
            print(f"\n{patch}^3 patches")
            print(f"  (a)  in-memory numpy           {fmt(a, patch)}")
            print(f"  (b1) BatchLoader, 1 process    {fmt(b1, patch)}")
            print(f"  (b2) DataLoader, 1 worker      {fmt(b_w1, patch)}")
            print(f"  (b2) DataLoader, 2 workers     {fmt(b_w2, patch)}")
            print(f"  (b2) 2 workers, uint8 batches  {fmt(u_w2, patch)} (dtype='image')")
            print(f"  (c)  TorchIO Queue, 1 worker   {fmt(c1, patch)}")
            print(f"  (c)  TorchIO Queue, 2 workers  {fmt(c2, patch)}")
            print(f"  ratios: b1/a = {b1 / a:.2f} (goal >= 0.8)", end="")
            if b_w1 and b_w2:
                print(f"; 2 workers / 1 = {b_w2 / b_w1:.2f} (goal >= 1.6)", end="")
            if c1 and c2 and b_w1 and b_w2:
                print(
                    f"; b/c at 1 worker = {b_w1 / c1:.2f} (goal > 1); at 2 workers = {b_w2 / c2:.2f} "
                    f"(goal >= 2); c/a = {c1 / a:.2f}-{c2 / a:.2f}",
                    end="",
                )
            print()

        if not args.no_tuning:
            print("\nlayout tuning: BatchLoader, 1 process, 96^3 patches (median of rounds)")
            comps = (
                ["none", "lzf", "blosc-lz4"]
                if args.quick
                else ["none", "lzf", "gzip", "blosc-lz4", "blosc-zstd"]
            )
            shapes = [(64, 64, 64)] if args.quick else [(32, 32, 32), (64, 64, 64), (32, 128, 128)]
            caches = [64 * MIB] if args.quick else [1 * MIB, 64 * MIB]
            print(
                f"  {'compression':<11} {'chunks':<15} {'cache':>6} {'file MB':>8} {'x arrays':>8} "
                f"{'patches/s':>9}"
            )
            for comp, chunks in itertools.product(comps, shapes):
                path = work / f"{comp}-{'x'.join(map(str, chunks))}.h5"
                size = write_h5(path, cases, comp, chunks)
                for cache in caches:
                    rates = []
                    for r in range(rounds):
                        with make_loader(path, 96, cache_bytes=cache, seed=1000 + r) as loader:
                            rates.append(run_loader(loader, n // 2))
                    rate = statistics.median(rates)
                    print(
                        f"  {comp:<11} {str(chunks):<15} {cache // MIB:>4}Mi {size / 1e6:8.0f} "
                        f"{size / raw:8.2f} {rate:9.1f}"
                    )
                path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
