"""How fast does the loader feed augmented patches? (issue 13; issue 5 with ``--layout``).

Usage::

    python benchmarks/bench_loader.py [--quick] [--data ../shared/data] [--input FILE.h5]
                                      [--cases 8] [--patches 160] [--rounds 5]
                                      [--workloads W1 W2 W3] [--skip MONAI TorchIO]
                                      [--baseline /work/main] [--threads 0]
    python benchmarks/bench_loader.py --layout [--no-torchio] [--no-tuning]

Default (issue 13): 96^3 patches, batches of 8, float32 images + uint8 masks, patches/s with
0 and 2 workers for three workloads, W1 = random flips on 3 axes + rot90, W2 = W1 + in-plane
rotation uniform in [-15, 15] degrees on every patch, W3 = nnU-Net v2's default 3-D set
(``preset = nnunet``), and three tools: dsbprep (BatchLoader in process with its default
threads: one per core for W2 and W3, one for W1, whose patches are a read and a copy;
``--threads`` sets a number for all three; ``PatchStream`` with DataLoader
workers, one thread each), MONAI (CacheDataset in memory without per-patch cache copies,
RandSpatialCropd then RandFlipd / RandRotate90d / RandRotated in-plane (``range_x`` for
(z, y, x) arrays); for W3 nnU-Net's set in MONAI's transforms, one for one: RandRotated,
RandZoomd, RandGaussianNoised, RandGaussianSmoothd, RandScaleIntensityd (brightness),
RandScaleIntensityFixedMeand (contrast), RandSimulateLowResolutiond, RandAdjustContrastd
with ``invert_image`` and without (gamma, statistics retained), RandFlipd; MONAI's DataLoader)
and TorchIO (Queue over NIfTI files, 16 patches per volume, RandomFlip / RandomAffine with
``degrees=(-15, 15, 0, 0, 0, 0)``; TorchIO has no rot90, and its subject transform runs on the
whole volume as in its usual use). Tools alternate order within each round; medians of the
rounds are printed with the issue's goal ratios. ``--baseline REPO`` also times W1 in one
process with the dsbprep of another checkout (e.g. today's main) on the same file.

The dataset: grt123's preprocessed LIDC-IDRI-0001 volume (``reference/grt123-LIDC-IDRI-0001.npz``
``clean``: HU windowed to uint8, 1 mm, lung crop (270, 205, 267)) and variants of it (flips,
shifts, +-noise) as separate cases, with a left/right lung mask (voxels grt123 did not fill with
170). Without the shared data, realistic synthetic lung-like volumes of that size are used;
``--input`` benchmarks the cases of an existing dsbprep file instead (e.g. ``make dataset``'s
output). The output says which.

``--layout`` (issue 5) measures, for 96^3 and 128^3 patches with random flips (z, y, x) +
rot90 on, batches of 8, float32 images + uint8 masks (MB/s counts those output bytes):

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
        import nibabel  # noqa: F401
        import torch
        import torchio as tio
    except ImportError:
        return None
    queue = _torchio_queue(folder, cases, tio.RandomFlip(axes=(0, 1, 2)), patch, workers, 4)
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


def issue5_comparison(args, cases, main_file: Path, work: Path, n: int, rounds: int) -> None:
    """Issue 5's comparison: (a) in memory, (b1) loader, (b2) workers, (c) TorchIO."""
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


def layout_tuning(args, cases, raw: int, work: Path, n: int, rounds: int) -> None:
    """Chunk shapes x compressions x chunk caches: (b1) patches/s and file size."""
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


# -- issue 13: workloads W1-W3, dsbprep vs MONAI vs TorchIO -------------------------------

#: The issue-13 workloads: W1 = flips on 3 axes + rot90; W2 = W1 + in-plane rotation uniform
#: in [-15, 15] degrees on every patch; W3 = nnU-Net v2's default 3-D augmentation.
WORKLOADS = ("W1", "W2", "W3")
W2_DEGREES = 15.0
WORKLOAD_PATCH = 96


def dsbprep_augment(workload: str):
    """The dsbprep augmentation of a workload."""
    from dsbprep.augment import Compose, Flip, Rot90, Rotate, nnunet_preset

    if workload == "W1":
        return Compose([Flip(), Rot90()])
    if workload == "W2":
        return Compose([Flip(), Rot90(), Rotate(max_degrees=W2_DEGREES, p=1.0)])
    return nnunet_preset()


def run_dsbprep(
    path: Path, workload: str, n: int, workers: int, seed: int, threads: int = 0
) -> Rate | None:
    """dsbprep patches/s: the loader in this process (0 workers, ``threads`` threads, 0 =
    the loader's default) or PatchStream workers."""
    loader = BatchLoader(
        path,
        threads=threads,
        patch_size=WORKLOAD_PATCH,
        batch_size=BATCH,
        augment=dsbprep_augment(workload),
        seed=seed,
        epochs=None,
        cache_bytes=64 * MIB,
    )
    if workers == 0:
        with loader:
            return run_loader(loader, n)
    return run_torch(loader, n, workers)


# Run by ``--baseline REPO``: the same W1 loop, importing dsbprep from another checkout.
_BASELINE_SCRIPT = """
import sys, time
sys.path.insert(0, sys.argv[1])
from dsbprep.augment import Compose, Flip, Rot90
from dsbprep.loader import BatchLoader
loader = BatchLoader(sys.argv[2], patch_size=(96, 96, 96), batch_size=8,
                     augment=Compose([Flip(), Rot90()]), seed=int(sys.argv[4]), epochs=None)
it = iter(loader); next(it)
done, start, cpu = 0, time.perf_counter(), time.process_time()
while done < int(sys.argv[3]):
    done += len(next(it))
print(done / (time.perf_counter() - start), (time.process_time() - cpu) / done)
"""


def run_baseline(repo: Path, path: Path, n: int, seed: int) -> Rate:
    """W1 patches/s (0 workers) of the dsbprep in ``repo`` (e.g. today's main) on the same file."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", _BASELINE_SCRIPT, str(repo), str(path), str(n), str(seed)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    rate, cpu = (float(v) for v in out.stdout.strip().splitlines()[-1].split())
    result = Rate(rate)
    result.cpu_ms = 1e3 * cpu
    return result


def monai_transforms(workload: str):
    """MONAI dictionary transforms of a workload (crop first, then augment the patch)."""
    import monai.transforms as mt

    keys = ("image", "mask")
    out = [mt.RandSpatialCropd(keys, roi_size=(WORKLOAD_PATCH,) * 3, random_size=False)]
    if workload == "W3":
        # nnU-Net's set in MONAI terms, transform for transform (nnU-Net's order); MONAI has
        # no "split at 1" (BGContrast) draw and its noise std is absolute, not relative.
        out += [
            mt.RandRotated(
                keys,
                range_x=0.52,
                range_y=0.52,
                range_z=0.52,
                prob=0.2,
                mode=("bilinear", "nearest"),
            ),
            mt.RandZoomd(keys, min_zoom=0.7, max_zoom=1.4, prob=0.2, mode=("trilinear", "nearest")),
            mt.RandGaussianNoised("image", prob=0.1, std=0.1),
            mt.RandGaussianSmoothd(
                "image", sigma_x=(0.5, 1), sigma_y=(0.5, 1), sigma_z=(0.5, 1), prob=0.1
            ),
            mt.RandScaleIntensityd("image", factors=0.25, prob=0.15),  # brightness
            mt.RandScaleIntensityFixedMeand(  # contrast about the mean, range kept
                "image", factors=0.25, prob=0.15, fixed_mean=True, preserve_range=True
            ),
            mt.RandSimulateLowResolutiond("image", prob=0.125, zoom_range=(0.5, 1.0)),
            mt.RandAdjustContrastd(  # gamma on the inverted image
                "image", gamma=(0.7, 1.5), prob=0.1, invert_image=True, retain_stats=True
            ),
            mt.RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.3, retain_stats=True),
        ]
    out += [mt.RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in (0, 1, 2)]
    if workload != "W3":
        out.append(mt.RandRotate90d(keys, prob=0.75, max_k=3, spatial_axes=(1, 2)))
    if workload == "W2":
        # For (z, y, x) arrays MONAI's in-plane (y, x) rotation is range_x.
        r = np.radians(W2_DEGREES)
        out.append(mt.RandRotated(keys, range_x=r, prob=1.0, mode=("bilinear", "nearest")))
    return mt.Compose(out)


def run_monai(cases, workload: str, n: int, workers: int, seed: int) -> Rate | None:
    """MONAI patches/s: CacheDataset in memory, dict transforms, its DataLoader."""
    try:
        import monai
        import torch
        from monai.data import CacheDataset, DataLoader
    except ImportError:
        return None
    monai.data.set_track_meta(False)  # plain tensors: MONAI's fastest setting
    monai.utils.set_determinism(seed)
    data = [{"image": v[None].astype(np.float32), "mask": m[None]} for v, m in cases]
    # copy_cache=False: no deep copy of the cached 59 MB volume per patch (MONAI's default
    # copies it; safe here because the crop comes first and nothing works in place).
    ds = CacheDataset(
        data, transform=monai_transforms(workload), progress=False, num_workers=0, copy_cache=False
    )
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=10**7)
    dl = DataLoader(
        ds,
        batch_size=BATCH,
        sampler=sampler,
        num_workers=workers,
        prefetch_factor=PREFETCH if workers else None,
    )
    return _time_batches(iter(dl), n, warm=2 * max(workers, 1))


def _time_batches(it, n: int, warm: int) -> Rate:
    for _ in range(warm):
        next(it)
    done, start, cpu = 0, time.perf_counter(), cpu_seconds()
    while done < n:
        done += len(next(it)["image"])
    return rate_of(done, time.perf_counter() - start, cpu_seconds() - cpu)


def torchio_transform(workload: str):
    """TorchIO transforms of a workload (TorchIO has no rot90: flips only in W1)."""
    import torchio as tio

    out = [tio.RandomFlip(axes=(0, 1, 2), flip_probability=0.5)]
    if workload == "W2":
        out.append(tio.RandomAffine(scales=0, degrees=(-W2_DEGREES, W2_DEGREES, 0, 0, 0, 0)))
    if workload == "W3":
        out = [
            tio.RandomAffine(scales=0, degrees=30, p=0.2),
            tio.RandomAffine(scales=(0.7, 1.4), degrees=0, p=0.2),
            tio.RandomNoise(std=(0, 0.1), p=0.1),
            tio.RandomBlur(std=(0.5, 1.0), p=0.1),
            tio.RandomGamma(log_gamma=(-0.35, 0.4), p=0.4),
            *out,
        ]
    return tio.Compose(out)


def run_torchio_workload(folder: Path, cases, workload: str, n: int, workers: int) -> Rate | None:
    """TorchIO patches/s: Queue (the subject transform runs on whole volumes, its usual use)."""
    try:
        import nibabel  # noqa: F401
        import torch
        import torchio as tio
    except ImportError:
        return None
    transform = torchio_transform(workload)
    queue = _torchio_queue(folder, cases, transform, WORKLOAD_PATCH, workers, 2)
    loader = torch.utils.data.DataLoader(queue, batch_size=BATCH, num_workers=0)
    done, start = 0, time.perf_counter()
    while done < n:  # whole queue refills included (timing only a drain would flatter it)
        for batch in loader:
            done += len(batch["image"][tio.DATA])
            if done >= n:
                break
    return rate_of(done, time.perf_counter() - start, None)


def _torchio_queue(folder, cases, transform, patch, workers, volumes):
    """A TorchIO Queue over the cases as NIfTI files, ``volumes`` volumes of patches long."""
    import torchio as tio

    dataset = tio.SubjectsDataset(_nifti_subjects(folder, cases), transform=transform)
    return tio.Queue(
        dataset,
        max_length=volumes * TORCHIO_SAMPLES_PER_VOLUME,
        samples_per_volume=TORCHIO_SAMPLES_PER_VOLUME,
        sampler=tio.data.UniformSampler(patch),
        num_workers=workers,
        shuffle_subjects=True,
        shuffle_patches=True,
    )


def _nifti_subjects(folder: Path, cases):
    import nibabel as nib
    import torchio as tio

    folder.mkdir(parents=True, exist_ok=True)
    subjects = []
    for k, (v, m) in enumerate(cases):
        img, lab = folder / f"case{k:02d}.nii", folder / f"case{k:02d}_mask.nii"
        if not img.exists():
            # NIfTI is x, y, z: store the z-y-x arrays transposed, 1 mm voxels.
            nib.save(nib.Nifti1Image(np.ascontiguousarray(v.T), np.eye(4)), img)
            nib.save(nib.Nifti1Image(np.ascontiguousarray(m.T), np.eye(4)), lab)
        subjects.append(tio.Subject(image=tio.ScalarImage(img), mask=tio.LabelMap(lab)))
    return subjects


def run_arm(tool: str, args, cases, path: Path, work: Path, key, n: int, r: int):
    """One measurement of ``tool`` for ``key`` = (workload, workers) in round ``r``."""
    workload, workers = key
    if tool == "dsbprep":
        return run_dsbprep(path, workload, n, workers, seed=100 + r, threads=args.threads)
    if tool == "MONAI":
        return run_monai(cases, workload, n, workers, seed=r)
    if tool == "TorchIO":
        return run_torchio_workload(work / "nifti", cases, workload, n, workers)
    return run_baseline(args.baseline, path, n, seed=100 + r)


def workload_rounds(args, cases, path: Path, work: Path, n: int, rounds: int) -> dict:
    """Median patches/s of every (tool, workload, workers); tools alternate within a round."""
    results: dict[tuple[str, str, int], list[float]] = {}
    for r in range(rounds):
        for key in [(w, k) for w in args.workloads for k in (0, 2)]:
            tools = [t for t in ("dsbprep", "MONAI", "TorchIO") if t not in args.skip]
            if args.baseline is not None and key == ("W1", 0):
                tools.append("main")
            for tool in tools if r % 2 == 0 else tools[::-1]:
                rate = run_arm(tool, args, cases, path, work, key, n, r)
                if rate is not None:
                    results.setdefault((tool, *key), []).append(rate)
                print(
                    f"  round {r + 1} {key[0]} {tool:8s} {key[1]} workers: "
                    f"{fmt(rate, WORKLOAD_PATCH)}",
                    flush=True,
                )
    return {k: statistics.median(v) for k, v in results.items()}


def print_workload_table(med: dict) -> None:
    """The table and the issue-13 goal ratios."""
    tools = [t for t in ("dsbprep", "MONAI", "TorchIO") if any(k[0] == t for k in med)]
    print(f"\nmedian patches/s ({WORKLOAD_PATCH}^3, batches of {BATCH}, float32), 0 / 2 workers")
    print("| workload | " + " | ".join(tools) + " |")
    print("|---|" + "---|" * len(tools))
    for w in WORKLOADS:
        cells = [
            " / ".join(f"{med.get((t, w, k), float('nan')):.1f}" for k in (0, 2)) for t in tools
        ]
        print(f"| {w} | " + " | ".join(cells) + " |")
    if ("main", "W1", 0) in med:
        print(f"| W1, today's main (0 workers) | {med[('main', 'W1', 0)]:.1f} |")
    ratio = med.get(("dsbprep", "W2", 0), np.nan) / med.get(("dsbprep", "W1", 0), np.nan)
    print(f"\nW2/W1 dsbprep, one process = {ratio:.2f} (goal >= 0.6)")
    for w in ("W2", "W3"):
        for k in (0, 2):
            for other in ("MONAI", "TorchIO"):
                ours, theirs = med.get(("dsbprep", w, k)), med.get((other, w, k))
                if ours and theirs:
                    print(f"{w} dsbprep / {other}, {k} workers = {ours / theirs:.2f} (goal >= 3)")
    if ("main", "W1", 0) in med:
        today = med[("main", "W1", 0)]
        print(
            f"W1 this branch / today's main, 0 workers = "
            f"{med[('dsbprep', 'W1', 0)] / today:.2f} (goal >= 1, not slower)"
        )


# -- command line -----------------------------------------------------------------------


def load_cases(args, n_cases: int):
    """The benchmark cases and a line saying what they are."""
    if args.input is not None:
        cases = file_cases(args.input, n_cases)
        return cases, f"{len(cases)} cases of {args.input}"
    if (args.data / REFERENCE).exists():
        cases = lidc_variants(args.data / REFERENCE, n_cases)
        return cases, (
            f"{n_cases} cases: grt123's clean LIDC-IDRI-0001 lung crop {cases[0][0].shape} uint8 "
            "and flipped/shifted/noisy variants of it (real data)"
        )
    cases = synthetic_cases(n_cases)
    return cases, f"{n_cases} SYNTHETIC lung-like uint8 volumes {LUNG_CROP_SHAPE} (no shared data)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases, patches and variants")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder")
    parser.add_argument("--input", type=Path, help="benchmark the cases of this dsbprep file")
    parser.add_argument("--cases", type=int, help="cases (default 8, quick 4)")
    parser.add_argument(
        "--patches", type=int, help="patches per measurement (default 160, quick 96)"
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 5, quick 3)")
    parser.add_argument(
        "--layout",
        action="store_true",
        help="issue 5's comparison (in-memory, loader, workers, TorchIO; flips + rot90) and "
        "the file-layout tuning, instead of the issue-13 workloads",
    )
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=("dsbprep", "MONAI", "TorchIO"),
        help="arms to leave out of the workload comparison",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. /work/main): its W1 loader, same file, "
        "measured in the same rounds",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="dsbprep's threads in one process (0 = the loader's default, one per core)",
    )
    parser.add_argument("--no-torchio", action="store_true", help="--layout: skip (c)")
    parser.add_argument("--no-tuning", action="store_true", help="--layout: skip the tuning")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    n_cases = args.cases or (4 if args.quick else 8)
    n = args.patches or (96 if args.quick else 160)
    rounds = args.rounds or (3 if args.quick else ROUNDS)
    cases, source = load_cases(args, n_cases)
    raw = sum(v.nbytes + m.nbytes for v, m in cases)
    print(f"dataset: {source}; {raw / 1e6:.0f} MB as uncompressed arrays (image + mask)")
    print(f"cpus: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}; batches of {BATCH}")
    if not args.layout:
        threads = args.threads or BatchLoader.default_threads()
        print(
            f"dsbprep in one process: {threads} thread(s)"
            + ("" if args.threads else " for W2/W3, 1 for W1 (flips and rot90 only)")
            + "; in each DataLoader worker: 1"
        )
    work = Path(tempfile.mkdtemp(prefix="dsbprep-bench-"))
    try:
        comp, chunks = MAIN_LAYOUT
        main_file = work / "main.h5"
        size = write_h5(main_file, cases, comp, chunks)
        print(f"file: {comp}, chunks {chunks}: {size / 1e6:.0f} MB ({size / raw:.2f} x arrays)")
        if args.layout:
            issue5_comparison(args, cases, main_file, work, n, rounds)
            if not args.no_tuning:
                layout_tuning(args, cases, raw, work, n, rounds)
        else:
            print_workload_table(workload_rounds(args, cases, main_file, work, n, rounds))
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
