"""Batches of augmented patches from a dsbprep HDF5 file, reproducible and worker-safe.

:class:`BatchLoader` iterates :class:`Batch` objects: ``images`` (float32 or the
file's dtype) and ``masks`` (uint8) shaped ``(batch, 1, *spatial)`` (or
channel-last ``(batch, *spatial, 1)`` for Keras), with the case ids, indices,
patch origins, boxes and augmentation parameters of every sample.

How it works
------------
* **Epochs.** An epoch visits every selected case once (every slice of a 2-D
  file: there each case is one slice) in a fresh order drawn from
  ``(seed, epoch)``; consecutive ``batch_size`` cases form a batch. ``epochs=None``
  iterates forever (for ``fit`` with ``steps_per_epoch``).
* **One fresh patch per case visit.** The sampler (:mod:`dsbprep.patches`) picks a
  position, the region is read from the file (:meth:`DsbDataset.read_region`,
  padded with the file's pad value and mask 0 outside the case), and the
  augmentation (:mod:`dsbprep.augment`) is applied to image, mask and boxes with
  one draw. No loaded volume is reused.
* **Randomness.** Everything random about the sample of case ``i`` in epoch ``e``
  comes from ``np.random.SeedSequence(seed, spawn_key=(1, e, i))``: position and
  augmentation depend on nothing else, so any number of worker processes (or a
  different batch size) yields the same patches, and :meth:`BatchLoader.replay`
  rebuilds a batch from its recorded origins and parameters.
* **Processes.** The HDF5 file is opened lazily in the process that reads (the
  process id is checked on every read) and never pickled (``__getstate__`` drops
  the handle), so fork- and spawn-started workers each open their own handle.
* **Threads.** The patches of one batch are made by ``threads`` threads of the
  process (default: one per core, at most ``MAX_AUTO_THREADS``, in the process that
  made the loader when the augmentation interpolates or changes intensities; one for
  flips and quarter turns only, and in worker processes, which already run side by side).
  Keras worker *threads* (``use_multiprocessing=False``) share that process's one pool. Every
  patch depends on its own seed only, so the batch is the same with any number of
  threads. HDF5 reads hold h5py's lock one at a time; the resampling and intensity
  loops release the GIL, so one thread's interpolation overlaps the other's read.

Run ``python -m dsbprep.loader --input_filename F --batchsize B --epochs E
[--print_batch_indices] [--print_random_image]``.

Examples
--------
>>> import tempfile, os
>>> from dsbprep.store import CaseData, DatasetWriter
>>> path = os.path.join(tempfile.mkdtemp(), "d.h5")
>>> with DatasetWriter(path, chunks=(8, 16, 16)) as w:
...     for k in range(3):
...         w.append(CaseData(f"c{k}", np.full((20, 30, 30), k, np.uint8),
...                           np.zeros((20, 30, 30), np.uint8)))
>>> loader = BatchLoader(path, patch_size=(8, 16, 16), batch_size=2, epochs=1, seed=0)
>>> [(b.images.shape, sorted(b.case_ids)) for b in loader]
[((2, 1, 8, 16, 16), ['c1', 'c2']), ((1, 1, 8, 16, 16), ['c0'])]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .augment import Compose
from .augment import from_config as augment_from_config
from .augment.compose import cut
from .augment.resample import transform_boxes
from .patches import CaseInfo, Sampler, SliceSampler, make_sampler
from .store import DEFAULT_CACHE_BYTES, DEFAULT_CACHE_SLOTS, SPLITS, DsbDataset, open_dataset

__all__ = [
    "Batch",
    "BatchLoader",
    "collate",
    "DEFAULT_PATCH_SIZE",
    "MAX_AUTO_THREADS",
    "Sample",
    "epoch_order",
    "loader_from_config",
    "main",
    "sample_rng",
    "save_patch_figure",
]

logger = logging.getLogger(__name__)

#: Default 3-D patch (z, y, x voxels): 96^3 at 1 mm covers a nodule with context
#: (the DSB2017 detector trains on 128^3; 96^3 is the common smaller choice).
DEFAULT_PATCH_SIZE = (96, 96, 96)
#: Default batch size (the seed's loader uses 16).
DEFAULT_BATCH_SIZE = 16
#: spawn_key namespaces of the two kinds of random streams derived from the root seed.
_ORDER_KEY = 0
_SAMPLE_KEY = 1
#: Output dtypes a loader can produce ("image" = the file's own dtype).
_DTYPES = ("float32", "float16", "image")
#: Patches drawn for ``--print_random_image``.
_FIGURE_PATCHES = 3
_MIB = 1024**2
#: Batch array pairs an iterator keeps for reuse: the one the caller holds while asking
#: for the next, the next, and one spare. Reusing memory avoids the page faults of fresh
#: allocations (large arrays come straight from mmap: about 0.6 ms per 128^3 float32 patch).
_POOL_SIZE = 3
#: ``threads=0`` (auto) uses one thread per core up to this many in the process that made
#: the loader: two threads already overlap one patch's read with another's resampling, and
#: HDF5 reads run one at a time whatever the number of threads.
MAX_AUTO_THREADS = 4
#: References to a pooled array when nobody outside the pool holds it: the pool's tuple
#: and ``sys.getrefcount``'s own argument.
_POOL_REFS = 2


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of everything random about case ``index`` in ``epoch``.

    Examples
    --------
    >>> float(sample_rng(0, 1, 2).random()) == float(sample_rng(0, 1, 2).random())
    True
    """
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(_SAMPLE_KEY, epoch, index))
    )


def epoch_order(
    seed: int, epoch: int, indices: Sequence[int] | np.ndarray, shuffle: bool = True
) -> np.ndarray:
    """The visiting order of ``indices`` in ``epoch`` (a permutation drawn from (seed, epoch)).

    Examples
    --------
    >>> epoch_order(0, 0, range(5), shuffle=False).tolist()
    [0, 1, 2, 3, 4]
    >>> sorted(epoch_order(0, 3, range(5)).tolist())
    [0, 1, 2, 3, 4]
    """
    indices = np.asarray(indices, np.int64)
    if not shuffle:
        return indices.copy()
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_ORDER_KEY, epoch)))
    return rng.permutation(indices)


@dataclass
class Sample:
    """One augmented patch. ``origin`` is the patch start (z, y, x) in the case frame
    before augmentation; ``boxes`` are in the augmented patch's frame."""

    image: np.ndarray
    mask: np.ndarray
    boxes: np.ndarray
    origin: np.ndarray
    params: list[dict[str, Any]]
    index: int
    epoch: int
    case_id: str


@dataclass
class Batch:
    """A batch of patches.

    Attributes
    ----------
    images : ndarray, (B, 1, *spatial) or (B, *spatial, 1)
    masks : ndarray uint8, same shape
    case_ids : list of str
    indices : ndarray (B,) int64
        Positions of the cases in the file (``DsbDataset.case_ids``).
    origins : ndarray (B, 3) int64
        Patch starts (z, y, x) in each case's frame, before augmentation.
    boxes : list of ndarray (n, len(BOX_COLUMNS))
        Per sample, the boxes whose centre lies in the patch, in the patch's frame.
    params : list of list of dict
        Per sample, the augmentation parameters (replay with :meth:`BatchLoader.replay`).
    epoch, number : int
        The epoch and the batch's number within it.
    """

    images: np.ndarray
    masks: np.ndarray
    case_ids: list[str]
    indices: np.ndarray
    origins: np.ndarray
    boxes: list[np.ndarray] = field(default_factory=list)
    params: list[list[dict[str, Any]]] = field(default_factory=list)
    epoch: int = 0
    number: int = 0

    def __len__(self) -> int:
        return len(self.indices)


def _check_arguments(batch_size: int, epochs: int | None, dtype: str) -> None:
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if epochs is not None and int(epochs) < 0:
        raise ValueError(f"epochs must be >= 0 or None, got {epochs}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")


def _check_drop_last(n: int, batch_size: int, drop_last: bool, path: str) -> None:
    """ValueError when ``drop_last`` would drop every batch (epochs=None then never yields)."""
    if drop_last and n < batch_size:
        raise ValueError(
            f"{path}: drop_last=True with {n} selected cases and batch_size={batch_size} "
            "would drop every batch; lower batch_size or set drop_last=False"
        )


def _selected(splits: np.ndarray, split: Any, path: str) -> np.ndarray:
    """Positions of the cases in ``split`` (all when None); ValueError when none."""
    codes = _split_codes(split)
    selected = (
        np.arange(len(splits)) if codes is None else np.flatnonzero(np.isin(splits, sorted(codes)))
    )
    if len(selected) == 0:
        raise ValueError(f"{path}: no case selected (split={split!r}, {len(splits)} cases)")
    return selected.astype(np.int64)


def _split_codes(split: Any) -> set[int] | None:
    if split is None or split == "":
        return None
    values = [split] if isinstance(split, str | int) else list(split)
    codes = set()
    for value in values:
        if isinstance(value, str):
            if value not in SPLITS or value == "":
                raise ValueError(f"unknown split {value!r}; expected train, val or test")
            codes.add(SPLITS[value])
        else:
            codes.add(int(value))
    return codes


class _Threads:
    """A loader's thread pool: made on first use in each process, never pickled or inherited."""

    def __init__(self, threads: int) -> None:
        if int(threads) < 0:
            raise ValueError(f"threads must be >= 0 (0 = auto), got {threads}")
        self.threads = int(threads)
        self.owner = os.getpid()  # the process that made the loader
        self.executor: tuple[int, ThreadPoolExecutor] | None = None
        self.lock = threading.Lock()  # Keras' worker threads may ask for the pool at once

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "executor": None, "lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, lock=threading.Lock())

    @staticmethod
    def default() -> int:
        """``threads=0`` where patches are computed: one per core, at most ``MAX_AUTO_THREADS``."""
        return max(1, min(MAX_AUTO_THREADS, os.cpu_count() or 1))

    def count(self, augment: Compose | None) -> int:
        """``threads``, or the automatic choice for ``augment`` in this process."""
        if self.threads:
            return self.threads
        if os.getpid() != self.owner:
            return 1  # a worker process: the workers already share the cores
        if augment is None or augment.view_only:
            # Flips and quarter turns cost a read and a copy: HDF5 reads run one at a time
            # under h5py's lock, so a second thread only adds lock traffic (measured).
            return 1
        return self.default()

    def pool(self, augment: Compose | None) -> ThreadPoolExecutor | None:
        """This process's pool of :meth:`count` threads (None for one thread)."""
        n = self.count(augment)
        if n < 2:
            return None
        with self.lock:
            if self.executor is None or self.executor[0] != os.getpid():
                # A pool inherited through fork has no threads in the child: make a new one.
                pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="dsbprep-loader")
                self.executor = (os.getpid(), pool)
            return self.executor[1]

    def close(self) -> None:
        with self.lock:
            if self.executor is not None and self.executor[0] == os.getpid():
                self.executor[1].shutdown(wait=True)
            self.executor = None


class BatchLoader:
    """Iterate batches of augmented patches from a dsbprep HDF5 file.

    Parameters
    ----------
    path : str or Path
        The dataset file.
    patch_size : int or sequence of int, optional
        (z, y, x) for 3-D patches, or (y, x) for 2-D ones; one int is a cube (a square
        for 2-D files), as in MONAI and TorchIO. Default: ``DEFAULT_PATCH_SIZE`` for
        volume files, the whole (padded) slice for 2-D files.
    batch_size : int
        Patches per batch (the last batch of an epoch may be smaller).
    sampler : str or Sampler
        ``"uniform"``, ``"label"``, ``"boxes"``, ``"slices"`` (see :mod:`dsbprep.patches`)
        or a sampler object; ``"auto"`` = slices for 2-D files, uniform for volumes.
    augment : Compose, optional
        Random transforms (none by default).
    seed : int, optional
        Root seed; None draws one (kept in ``self.seed``, so workers still agree).
    split : str or int or list, optional
        Only cases of these splits ("train", "val", "test"); None = all cases.
    channels_last : bool
        ``(B, *spatial, 1)`` instead of ``(B, 1, *spatial)``.
    epochs : int, optional
        Number of epochs to iterate; None = forever.
    shuffle : bool
        Fresh random case order every epoch (else file order).
    dtype : {"float32", "float16", "image"}
        Dtype of ``Batch.images`` ("image" = the file's dtype, e.g. uint8). Values are not rescaled.
    drop_last : bool
        Drop an epoch's last, smaller batch. With fewer selected cases than
        ``batch_size`` every batch would be dropped: that raises ValueError (batches
        never span epochs, so ``epoch`` and ``number`` always name one epoch's batch).
    sampler_options : dict, optional
        Keyword arguments for a sampler given by name (``positive_fraction``, ``labels``, ...).
    cache_bytes, cache_slots : int
        HDF5 chunk cache of each worker's file handle (per dataset).
    threads : int
        Threads making a batch's patches in this process; 0 = automatic (module
        docstring, *Threads*). The batches do not depend on it.

    Raises
    ------
    ValueError
        Bad sizes, an unknown split or sampler, a rot90 augmentation with a non-square
        in-plane patch, no case selected, or ``drop_last`` with fewer cases than
        ``batch_size``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        patch_size: Sequence[int] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        sampler: str | Sampler = "auto",
        augment: Compose | None = None,
        seed: int | None = 0,
        split: Any = None,
        channels_last: bool = False,
        epochs: int | None = None,
        shuffle: bool = True,
        *,
        dtype: str = "float32",
        drop_last: bool = False,
        sampler_options: dict[str, Any] | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        cache_slots: int = DEFAULT_CACHE_SLOTS,
        threads: int = 0,
    ) -> None:
        self.path = os.fspath(path)
        _check_arguments(batch_size, epochs, dtype)
        self._threads = _Threads(threads)
        self.batch_size = int(batch_size)
        self.epochs = None if epochs is None else int(epochs)
        self.shuffle = bool(shuffle)
        self.channels_last = bool(channels_last)
        self.drop_last = bool(drop_last)
        self.cache_bytes, self.cache_slots = int(cache_bytes), int(cache_slots)
        self.augment = augment if augment is not None and len(augment) else None
        self.seed = int(np.random.SeedSequence(seed).entropy)
        self._ds: DsbDataset | None = None
        self._pid: int | None = None
        self._h5: tuple[Any, Any] | None = None
        self._z0: np.ndarray | None = None
        self._infos: dict[int, CaseInfo] = {}

        with open_dataset(self.path, cache_bytes=_MIB, cache_slots=521) as ds:
            self.kind = ds.kind
            self.pad_value = ds.pad_value
            ds.report_unreadable()  # unreadable cases are not in case_ids: a warning names each
            self.case_ids = list(ds.case_ids)
            self.shapes = ds.column("shape").astype(np.int64).reshape(-1, 3)
            self.n_boxes = ds.column("n_boxes").astype(np.int64)
            splits = ds.column("split").astype(np.int64)
            self.file_inplane = ds.image_shape[1:]
            self.image_dtype = ds.image_dtype
        self.indices = _selected(splits, split, self.path)
        _check_drop_last(len(self.indices), self.batch_size, self.drop_last, self.path)
        if sampler == "auto":
            sampler = "slices" if self.kind == "slices" else "uniform"
        self.sampler = make_sampler(sampler, **(sampler_options or {}))
        two_d = self.kind == "slices" or isinstance(self.sampler, SliceSampler)
        self.two_d, patch = _resolve_patch(patch_size, two_d, self.file_inplane, self.path)
        self.patch3 = np.asarray(patch, np.int64)
        self.patch_size = patch[1:] if self.two_d else patch
        if self.augment is not None and self.augment.swaps_axes and patch[1] != patch[2]:
            raise ValueError(
                f"rot90 augmentation needs a square in-plane patch, got {self.patch_size}"
            )
        out_dtype = self.image_dtype if dtype == "image" else np.dtype(dtype)
        self.dtype = np.dtype(out_dtype)

    # -- processes ---------------------------------------------------------------
    def _dataset(self) -> DsbDataset:
        """This process's own file handle (opened on first use after a fork or unpickling)."""
        if self._ds is None or self._pid != os.getpid():
            # A handle inherited through fork is never used: HDF5 state is per process.
            self._ds = open_dataset(
                self.path, cache_bytes=self.cache_bytes, cache_slots=self.cache_slots
            )
            self._pid = os.getpid()
            # h5py resolves a name on every ``file[name]``; keep the two dataset objects.
            self._h5 = self._ds.arrays
            self._z0 = self._ds.column("z0").astype(np.int64)
        return self._ds

    def read_region(
        self, index: int, start: np.ndarray, size: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Image and mask box of case ``index`` (as :meth:`DsbDataset.read_region`, faster).

        Parts outside the case get the file's pad value (image) and 0 (mask).
        """
        self._dataset()
        images, masks = self._h5
        z0 = int(self._z0[index])
        return _read_box(images, masks, z0, self.shapes[index], start, size, self.pad_value)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_ds"] = state["_h5"] = state["_z0"] = None
        state["_pid"] = None
        return state

    def close(self) -> None:
        """Close this process's file handle and threads (both made again on the next read)."""
        if self._ds is not None and self._pid == os.getpid():
            self._ds.close()
        self._ds = self._h5 = self._z0 = None
        self._pid = None
        self._threads.close()

    default_threads = staticmethod(_Threads.default)

    def thread_count(self) -> int:
        """Threads this process uses per batch (``threads``, or the automatic choice)."""
        return self._threads.count(self.augment)

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"BatchLoader({self.path!r}, {len(self.indices)} cases, patch {self.patch_size}, "
            f"batch {self.batch_size}, sampler {self.sampler.name}, augment {self.augment})"
        )

    # -- epochs ------------------------------------------------------------------
    @property
    def batches_per_epoch(self) -> int:
        """Number of batches in one epoch."""
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The case indices of each batch of ``epoch``, in visiting order."""
        order = epoch_order(self.seed, epoch, self.indices, self.shuffle)
        return [
            order[s : s + self.batch_size]
            for s in range(0, self.batches_per_epoch * self.batch_size, self.batch_size)
        ]

    def __iter__(self) -> Iterator[Batch]:
        """Batches of every epoch in order.

        Batch arrays are recycled: an array is refilled only when nothing outside the
        iterator references it any more (no batch, view or tensor made from it), so a
        batch the caller keeps is never modified.
        """
        epochs = itertools.count() if self.epochs is None else range(self.epochs)
        pool = _ArrayPool(_POOL_SIZE)
        for epoch in epochs:
            for number, idx in enumerate(self.epoch_batches(epoch)):
                out = pool.take(self.batch_shape(len(idx)), self.dtype)
                batch = self.load_batch(idx, epoch=epoch, number=number, out=out)
                del out
                yield batch
                del batch  # only the caller may still hold it: the pool can see that

    # -- samples -----------------------------------------------------------------
    def case_info(self, index: int) -> CaseInfo:
        """What the sampler knows about case ``index`` (cached per process)."""
        info = self._infos.get(index)
        if info is None:
            ds = self._dataset()
            record = ds[int(index)]
            boxes = record.boxes if self.n_boxes[index] else None
            fg = record.meta.get("foreground") if self.sampler.needs_foreground else None
            info = CaseInfo.from_meta(self.shapes[index], boxes, fg)
            self._infos[index] = info
        return info

    def draw(self, epoch: int, index: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The patch origin and augmentation parameters of case ``index`` in ``epoch``."""
        rng = sample_rng(self.seed, epoch, int(index))
        origin = self.sampler.origin(self.case_info(int(index)), self.patch3, rng)
        params = self.augment.draw(rng) if self.augment is not None else []
        return origin, params

    def sample(self, epoch: int, index: int) -> Sample:
        """The augmented patch of case ``index`` in ``epoch`` (the same in every process)."""
        origin, params = self.draw(epoch, index)
        return self.load(index, origin, params, epoch=epoch)

    def load(
        self,
        index: int,
        origin: Sequence[int],
        params: list[dict[str, Any]],
        *,
        epoch: int = -1,
        out: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Sample:
        """Read the patch of case ``index`` at ``origin`` and apply recorded ``params``: the
        box the composed map reads, resampled once (:meth:`dsbprep.augment.Compose.render`),
        into ``out`` (a batch's image and mask rows) where it can."""
        index = int(index)
        origin = np.asarray(origin, np.int64)
        boxes = self.case_info(index).boxes.copy()
        boxes[:, :3] -= origin
        if self.augment is None:
            image, mask = self.read_region(index, origin, self.patch3)
        else:
            mapping, lo, hi = self.augment.plan(params, self.patch3, 2 if self.two_d else 3)
            image, mask = self.read_region(index, origin + lo, hi - lo)
            rows = None if out is None else tuple(a.reshape(self.patch3) for a in out)
            image, mask = self.augment.render(
                image, mask, mapping.shifted(lo), self.patch3, params, self.dtype, rows
            )
            boxes = transform_boxes(boxes, mapping)
        if self.two_d:
            image, mask = image[0], mask[0]
        boxes = _boxes_inside(boxes, image.shape)
        return Sample(image, mask, boxes, origin, params, index, epoch, self.case_ids[index])

    def batch_shape(self, n: int) -> tuple[int, ...]:
        """Shape of ``Batch.images`` / ``Batch.masks`` for ``n`` patches."""
        spatial = tuple(int(s) for s in self.patch_size)
        return (n, *spatial, 1) if self.channels_last else (n, 1, *spatial)

    def collate(
        self,
        samples: Sequence[Sample],
        *,
        number: int = 0,
        out: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Batch:
        """Stack samples into a :class:`Batch` (images converted to ``dtype``) in ``out`` =
        (images, masks) of :meth:`batch_shape` if given (e.g. a worker's shared memory)."""
        shape = self.batch_shape(len(samples))
        return collate(samples, shape, self.dtype, self.channels_last, number=number, out=out)

    def load_batch(
        self,
        indices: Sequence[int],
        *,
        epoch: int,
        number: int = 0,
        out: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Batch:
        """The batch of cases ``indices`` in ``epoch`` (``out``: see :meth:`collate`)."""
        samples, out = _load_into(self, indices, epoch, out)
        return self.collate(samples, number=number, out=out)

    def replay(self, batch: Batch) -> Batch:
        """Rebuild ``batch`` from its recorded indices, origins and parameters."""
        samples = [
            self.load(i, o, p, epoch=batch.epoch)
            for i, o, p in zip(batch.indices, batch.origins, batch.params, strict=True)
        ]
        return self.collate(samples, number=batch.number)


def _resolve_patch(
    patch_size: int | Sequence[int] | None,
    two_d: bool,
    file_inplane: tuple[int, ...],
    path: str,
) -> tuple[bool, tuple[int, int, int]]:
    """``(two_d, (z, y, x))`` of a patch-size argument: an int is a cube (2-D: a square)."""
    if patch_size is None:
        patch_size = file_inplane if two_d else DEFAULT_PATCH_SIZE
    if isinstance(patch_size, int | np.integer):
        patch_size = (int(patch_size),) * (2 if two_d else 3)
    patch = tuple(int(s) for s in patch_size)
    if len(patch) == 2:
        two_d = True
        patch = (1, *patch)
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f"patch_size must be 2 or 3 positive ints, got {tuple(patch_size)}")
    if two_d and patch[0] != 1:
        raise ValueError(f"{path}: 2-D patches need patch_size (y, x) or (1, y, x), got {patch}")
    return two_d, patch


def _read_box(images, masks, z0: int, shape: np.ndarray, start, size, pad_value):
    """Image and mask box ``[start, start + size)`` of the case stored from row ``z0``.

    Parts outside the case (``shape``) get ``pad_value`` (image) and 0 (mask).
    """
    start = np.asarray(start, np.int64)
    stop = start + np.asarray(size, np.int64)
    return (cut(images, start, stop, pad_value, shape=shape, z0=z0),
            cut(masks, start, stop, 0, shape=shape, z0=z0))


def _boxes_inside(boxes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The boxes whose centre lies inside a patch of ``shape`` (2-D: the y, x columns):
    in [-0.5, n - 0.5) voxels per axis, the rule of the build and of ``dsbprep.verify``."""
    if not len(boxes):
        return boxes
    centre = boxes[:, 3 - len(shape) : 3]
    inside = np.all((centre >= -0.5) & (centre < np.asarray(shape) - 0.5), axis=1)
    return boxes[inside]


def collate(
    samples: Sequence[Sample],
    shape: tuple[int, ...],
    dtype: np.dtype,
    channels_last: bool,
    *,
    number: int = 0,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> Batch:
    """Stack samples into a :class:`Batch` of ``shape`` (images converted to ``dtype``)."""
    if out is None:
        images, masks = np.empty(shape, dtype), np.empty(shape, np.uint8)
    else:
        images, masks = out
        if (images.shape != shape or masks.shape != shape or images.dtype != dtype
                or masks.dtype != np.uint8):
            raise ValueError(
                f"out arrays must be {shape} {dtype} and uint8, got "
                f"{images.shape} {images.dtype} and {masks.shape} {masks.dtype}"
            )
    scratch: dict[Any, np.ndarray] = {}
    for b, s in enumerate(samples):
        target = (
            (images[b, ..., 0], masks[b, ..., 0]) if channels_last else (images[b, 0], masks[b, 0])
        )
        if not _same_memory(target[0], s.image):
            _copy_into(target[0], s.image, scratch)
        if not _same_memory(target[1], s.mask):
            target[1][...] = s.mask
    return Batch(
        images=images,
        masks=masks,
        case_ids=[s.case_id for s in samples],
        indices=np.array([s.index for s in samples], np.int64),
        origins=np.array([s.origin for s in samples], np.int64).reshape(-1, 3),
        boxes=[s.boxes for s in samples],
        params=[s.params for s in samples],
        epoch=samples[0].epoch if samples else 0,
        number=number,
    )


def _load_into(loader: BatchLoader, indices: Sequence[int], epoch: int, out):
    """The samples of ``indices`` resampled straight into the rows of ``out`` (new arrays
    when None) where possible, and ``out``."""
    shape = loader.batch_shape(len(indices))
    if out is None:
        out = (np.empty(shape, loader.dtype), np.empty(shape, np.uint8))
    if loader.channels_last or out[0].shape != shape or out[1].shape != shape:
        rows = [None] * len(indices)
    else:
        rows = list(zip(out[0][:, 0], out[1][:, 0], strict=True))

    def make(i: int, row) -> Sample:
        origin, params = loader.draw(epoch, int(i))
        return loader.load(int(i), origin, params, epoch=epoch, out=row)

    pool = loader._threads.pool(loader.augment) if len(indices) > 1 else None
    if pool is None:
        return [make(i, row) for i, row in zip(indices, rows, strict=True)], out
    loader._dataset()  # open the file before the threads need it
    return list(pool.map(make, indices, rows)), out


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``b`` is ``a``'s memory with ``a``'s layout (a sample resampled in place)."""
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and a.strides == b.strides
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    )


def _copy_into(dst: np.ndarray, src: np.ndarray, scratch: dict[Any, np.ndarray]) -> None:
    """``dst[...] = src``; a converting copy of a view with a strided last axis goes
    through a contiguous buffer of ``src``'s dtype (flips of x and rot90 views: numpy's
    casting loop is about 1.5x slower on such strides than a same-dtype copy plus a
    contiguous cast). The values are the same either way."""
    if dst.dtype == src.dtype or src.strides[-1] == src.itemsize or src.shape != dst.shape:
        dst[...] = src
        return
    key = (src.shape, src.dtype)
    buf = scratch.get(key)
    if buf is None:
        buf = scratch[key] = np.empty(src.shape, src.dtype)
    np.copyto(buf, src)
    dst[...] = buf


class _ArrayPool:
    """(images, masks) batch arrays reused once nobody else references them.

    CPython counts references exactly: a batch, a view of its arrays (``base``), a
    tensor from ``torch.from_numpy`` or a memoryview all hold one, so an array whose
    count is back to the pool's own is free to refill.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._pairs: list[tuple[np.ndarray, np.ndarray]] = []

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """A free pair of this shape and dtype (new when none is free)."""
        for k, pair in enumerate(self._pairs):
            if sys.getrefcount(pair[0]) == _POOL_REFS and sys.getrefcount(pair[1]) == _POOL_REFS:
                if pair[0].shape == shape and pair[0].dtype == dtype:
                    return pair
                del self._pairs[k]  # free but of another shape (an epoch's last batch)
                break
        pair = (np.empty(shape, dtype), np.empty(shape, np.uint8))
        if len(self._pairs) < self.size:
            self._pairs.append(pair)
        return pair


# ---------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------


def loader_from_config(path: str | os.PathLike, config: Any, **overrides: Any) -> BatchLoader:
    """A :class:`BatchLoader` set up from a :class:`dsbprep.config.Config` ([loader], [augmentation])."""
    params = config.params("loader")
    params.update({k: v for k, v in overrides.items() if v is not None})
    split = params.get("split") or None
    patch = params.get("patch_size")
    if patch not in (None, ""):
        patch = int(patch) if isinstance(patch, int) else tuple(np.atleast_1d(patch).tolist())
    else:
        patch = None
    with open_dataset(path, cache_bytes=_MIB, cache_slots=521) as ds:
        if ds.kind == "slices":
            patch = None  # a 2-D file: whole slices, whatever the 3-D patch size says
    return BatchLoader(
        path,
        patch_size=patch,
        batch_size=params["batch_size"],
        sampler=params.get("sampler", "auto"),
        augment=augment_from_config(config.params("augmentation")),
        seed=params.get("seed", 0),
        split=split,
        channels_last=bool(params.get("channels_last", False)),
        epochs=params.get("epochs"),
        shuffle=bool(params.get("shuffle", True)),
        dtype=str(params.get("dtype", "float32")),
        sampler_options={
            "positive_fraction": params.get("positive_fraction"),
            "labels": params.get("labels") or None,
        }
        if params.get("sampler") in ("boxes", "label")
        else None,
        cache_bytes=int(float(params.get("cache_mb", DEFAULT_CACHE_BYTES / _MIB)) * _MIB),
        threads=int(params.get("threads", 0) or 0),
    )


def save_patch_figure(
    loader: BatchLoader,
    path: str | os.PathLike,
    *,
    n: int = _FIGURE_PATCHES,
    seed: int | None = None,
) -> Path:
    """Save a PNG of ``n`` random augmented patches with their masks (``dsbprep.viz``'s drawing).

    3-D patches show their middle axial slice. Cases and epochs are drawn with ``seed``.
    """
    from .viz import save_patches_figure

    rng = np.random.default_rng(seed)
    picks = rng.choice(loader.indices, size=min(n, len(loader.indices)), replace=False)
    epoch = int(rng.integers(0, 2**31))
    return save_patches_figure([loader.sample(epoch, int(i)) for i in picks], path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dsbprep.loader",
        description="Load batches of images and masks from the HDF5 datafile",
    )
    parser.add_argument(
        "--input_filename",
        help="Name of the hdf5 to load for data (default: [paths] output_filename of the config)",
    )
    parser.add_argument("--batchsize", type=int, help="batch size for data loader")
    parser.add_argument("--epochs", type=int, help="number of epochs to train")
    parser.add_argument(
        "--print_random_image", action="store_true", help="unit test: print random image and mask"
    )
    parser.add_argument(
        "--print_batch_indices",
        action="store_true",
        help="unit test: print the indices for each batch",
    )
    parser.add_argument("--config", help="config.ini to read (default: ./config.ini if present)")
    parser.add_argument("--seed", type=int, help="root seed (default: [loader] seed)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""

    from .config import load_config
    from .errors import DsbprepError

    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
        path = args.input_filename or config.get("paths", "output_filename")
        loader = loader_from_config(
            path, config, batch_size=args.batchsize, epochs=args.epochs, seed=args.seed
        )
    except (OSError, ValueError, DsbprepError) as err:
        print(f"dsbprep.loader: {err}", file=sys.stderr)
        return 2
    try:
        _run_cli(loader, args, config)
    except DsbprepError as err:  # e.g. a case whose metadata is unreadable, met mid-epoch
        print(f"dsbprep.loader: {err}", file=sys.stderr)
        return 1
    finally:
        loader.close()
    return 0


def _run_cli(loader: BatchLoader, args: argparse.Namespace, config: Any) -> None:
    """What ``python -m dsbprep.loader`` does once its loader is made."""
    from tqdm import tqdm

    epochs = loader.epochs if loader.epochs is not None else 1
    unit = "pixels" if loader.two_d else "voxels"
    size = (*loader.patch_size, 1)
    n = len(loader.indices)
    print(f"Number of images: {n}")
    print(f"Number of masks: {n}")
    if not loader.two_d:
        shapes = loader.shapes[loader.indices]
        print(
            f"Case sizes = {tuple(int(v) for v in shapes.min(0))} to "
            f"{tuple(int(v) for v in shapes.max(0))} voxels; patches from sampler '{loader.sampler.name}'"
        )
    print(f"Image size = {size} {unit}")
    print(f"Mask size = {size} {unit}")
    print(f"Batch size = {loader.batch_size}")
    print(f"Number of epochs = {epochs}")
    print()
    if args.print_batch_indices:
        print()
        for epoch in tqdm(range(epochs), desc="Epoch", file=sys.stderr):
            print(f"********** EPOCH {epoch + 1} **************")
            for idx in loader.epoch_batches(epoch):
                print(np.sort(idx))
            sys.stdout.flush()
    if args.print_random_image:
        figure = config.get("loader", "figure")
        out = save_patch_figure(loader, figure, seed=loader.seed)
        print(f"Saved three random augmented patches with their masks to {out}")
    if not (args.print_batch_indices or args.print_random_image):
        start, patches = time.perf_counter(), 0
        with tqdm(total=epochs * loader.batches_per_epoch, desc="Batches", file=sys.stderr) as bar:
            for epoch in range(epochs):
                for number, idx in enumerate(loader.epoch_batches(epoch)):
                    patches += len(loader.load_batch(idx, epoch=epoch, number=number))
                    bar.update()
        seconds = time.perf_counter() - start
        print(
            f"Loaded {patches} patches in {seconds:.2f} s ({patches / max(seconds, 1e-9):.1f} patches/s)"
        )


if __name__ == "__main__":
    raise SystemExit(main())
