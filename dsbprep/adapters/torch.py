"""PyTorch adapters: a map-style ``Dataset`` with an epoch/shard sampler, and an ``IterableDataset``.

Both wrap a :class:`dsbprep.loader.BatchLoader`, whose samples depend only on
``(seed, epoch, case index)``: results are the same with 0, 1 or N workers and in
every run. Each worker process opens its own HDF5 handle on first read (the
loader checks the process id and is pickled without its handle), so the file may
be opened in the parent before the ``DataLoader`` forks or spawns its workers.

Map-style, one sample per item (``DataLoader`` collates)::

    ds = PatchDataset(loader)
    sampler = EpochSampler(ds, rank=rank, world_size=world_size)
    dl = DataLoader(ds, batch_size=16, sampler=sampler, num_workers=2)
    for epoch in range(n):
        sampler.set_epoch(epoch)
        for batch in dl: ...   # batch["image"]: (16, 1, z, y, x) float32

Iterable, whole batches (``batch_size=None``; each batch built by one worker,
workers take turns, so the stream equals ``iter(loader)`` whatever ``num_workers``)::

    dl = DataLoader(PatchStream(loader), batch_size=None, num_workers=2)

The shared-memory batch ring that hands worker batches to the main process lives in
:mod:`dsbprep.adapters.ring`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

try:
    import torch
    from torch.utils.data import (
        Dataset,
        IterableDataset,
        Sampler,
        get_worker_info,
    )
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "dsbprep.adapters.torch needs PyTorch: pip install 'dsbprep[torch]' "
        "(on the project machines: pip install torch==2.13.0, a CPU build)"
    ) from err

from ..loader import Batch, BatchLoader, Sample, epoch_order
from .ring import SlotRing, next_serial, shared_empty, slot_record

__all__ = [
    "DEFAULT_SLOTS",
    "DEFAULT_SLOT_WAIT_S",
    "EpochSampler",
    "PatchDataset",
    "PatchStream",
    "batch_to_tensors",
    "sample_to_tensors",
]

logger = logging.getLogger(__name__)

#: Shared batch slots of a ``PatchStream``: 2 workers x (prefetch_factor 2 + the batch
#: the caller holds + one spare). Give ``num_workers * (prefetch_factor + 2)`` for more.
DEFAULT_SLOTS = 8
#: Seconds a worker waits for a free slot before sending a batch in fresh shared memory.
DEFAULT_SLOT_WAIT_S = 5.0


def _loader(loader: BatchLoader | str, kwargs: dict[str, Any]) -> BatchLoader:
    if isinstance(loader, BatchLoader):
        if kwargs:
            raise TypeError(
                "pass either a BatchLoader or a path with BatchLoader keyword arguments"
            )
        return loader
    return BatchLoader(loader, **kwargs)


def sample_to_tensors(sample: Sample, dtype: np.dtype) -> dict[str, Any]:
    """One sample as a dict of tensors: ``image`` (1, *spatial), ``mask`` (1, *spatial) uint8,
    ``index``, ``epoch``, ``origin`` (3,)."""
    image = np.ascontiguousarray(sample.image, dtype=dtype)[None]
    mask = np.ascontiguousarray(sample.mask, dtype=np.uint8)[None]
    return {
        "image": torch.from_numpy(image),
        "mask": torch.from_numpy(mask),
        "index": sample.index,
        "epoch": sample.epoch,
        "origin": torch.from_numpy(np.asarray(sample.origin, np.int64)),
    }


def batch_to_tensors(batch: Batch) -> dict[str, Any]:
    """A :class:`Batch` as a dict of tensors (``image``, ``mask``, ``index``, ``origin``, ``epoch``,
    ``number``); boxes and augmentation parameters stay Python lists (``boxes``, ``params``)."""
    return {
        "image": torch.from_numpy(batch.images),
        "mask": torch.from_numpy(batch.masks),
        "index": torch.from_numpy(batch.indices),
        "origin": torch.from_numpy(batch.origins),
        "epoch": batch.epoch,
        "number": batch.number,
        "boxes": batch.boxes,
        "params": batch.params,
    }


class PatchDataset(Dataset):
    """Map-style dataset: one augmented patch per selected case.

    ``ds[k]`` is the patch of the k-th selected case in epoch ``ds.epoch``;
    ``ds[(epoch, case_index)]`` names both (what :class:`EpochSampler` yields, so
    persistent workers need no epoch state).

    Parameters
    ----------
    loader : BatchLoader or str
        A loader, or a file path plus ``BatchLoader`` keyword arguments.
    epoch : int
        Epoch used for plain integer keys.
    """

    def __init__(self, loader: BatchLoader | str, *, epoch: int = 0, **kwargs: Any) -> None:
        self.loader = _loader(loader, kwargs)
        if self.loader.channels_last:
            raise ValueError(
                "PyTorch wants channel-first patches: use a BatchLoader with channels_last=False"
            )
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.loader.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, tuple):
            epoch, index = int(key[0]), int(key[1])
        else:
            epoch, index = self.epoch, int(self.loader.indices[int(key)])
        return sample_to_tensors(self.loader.sample(epoch, index), self.loader.dtype)


class EpochSampler(Sampler):
    """Yield ``(epoch, case_index)`` keys in the loader's shuffled epoch order, sharded by rank.

    Like ``DistributedSampler``: every rank gets ``ceil(n / world_size)`` keys (the
    order is padded by wrapping around, unless ``drop_last``), rank ``r`` takes
    positions ``r, r + world_size, ...``; call :meth:`set_epoch` before each epoch.

    Parameters
    ----------
    dataset : PatchDataset or BatchLoader
    rank, world_size : int
        This process's rank and the number of processes (one per GPU).
    epoch : int
        First epoch.
    drop_last : bool
        Drop the tail instead of padding so that all ranks have equal counts.
    """

    def __init__(
        self,
        dataset: PatchDataset | BatchLoader,
        *,
        rank: int = 0,
        world_size: int = 1,
        epoch: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.loader = dataset.loader if isinstance(dataset, PatchDataset) else dataset
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = int(epoch)
        self.drop_last = bool(drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)

    def _positions(self) -> int:
        n = len(self.loader.indices)
        return n // self.world_size if self.drop_last else -(-n // self.world_size)

    def __len__(self) -> int:
        return self._positions()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_order(self.loader.seed, self.epoch, self.loader.indices, self.loader.shuffle)
        total = self._positions() * self.world_size
        order = np.resize(order, total) if total > len(order) else order[:total]
        return iter([(self.epoch, int(i)) for i in order[self.rank :: self.world_size]])


class PatchStream(IterableDataset):
    """Iterable dataset of whole batches, the loader's epochs in order (infinite if ``epochs`` is None).

    Use with ``DataLoader(stream, batch_size=None, num_workers=N)``. Batch ``g`` of the
    global stream (counted over epochs) goes to rank ``g % world_size``; within a rank,
    workers take its batches in turn, which is the order the DataLoader reads them back,
    so the stream is the same for any ``num_workers``.

    Worker processes hand batches over through a ring of shared-memory slots allocated
    here (see the module docstring): the main process gets views of a slot that stay
    valid, and unmodified, for as long as anything references them.

    Parameters
    ----------
    loader : BatchLoader or str
    rank, world_size : int
        Sharding for multi-GPU runs.
    start_epoch : int
        First epoch (resume).
    slots : int
        Shared batch buffers (``DEFAULT_SLOTS``), shared out among the workers; give at
        least ``num_workers * (prefetch_factor + 2)`` so that workers never wait. 0 sends
        every batch in fresh shared memory instead (slower). Memory: ``slots`` full
        batches of images and masks.
    slot_wait_s : float
        How long a worker waits for a free slot before sending a batch the slow way.

    Raises
    ------
    ValueError
        Bad rank/world size, negative ``slots`` or ``slot_wait_s``.

    Examples
    --------
    >>> from torch.utils.data import DataLoader   # doctest: +SKIP
    >>> dl = DataLoader(PatchStream(loader, slots=8), batch_size=None, num_workers=2)  # doctest: +SKIP
    >>> batch = next(iter(dl)); batch["image"].shape   # doctest: +SKIP
    torch.Size([16, 1, 96, 96, 96])
    """

    def __init__(
        self,
        loader: BatchLoader | str,
        *,
        rank: int = 0,
        world_size: int = 1,
        start_epoch: int = 0,
        slots: int = DEFAULT_SLOTS,
        slot_wait_s: float = DEFAULT_SLOT_WAIT_S,
        **kwargs: Any,
    ) -> None:
        self.loader = _loader(loader, kwargs)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if int(slots) < 0:
            raise ValueError(f"slots must be >= 0, got {slots}")
        if float(slot_wait_s) < 0:
            raise ValueError(f"slot_wait_s must be >= 0, got {slot_wait_s}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.start_epoch = int(start_epoch)
        self.slot_wait_s = float(slot_wait_s)
        shape = self.loader.batch_shape(self.loader.batch_size)
        self.ring = SlotRing(int(slots), shape, self.loader.dtype) if int(slots) else None

    def _plan(self) -> Iterator[tuple[int, int, np.ndarray]]:
        loader = self.loader
        stop = None if loader.epochs is None else loader.epochs
        epochs = (
            itertools.count(self.start_epoch) if stop is None else range(self.start_epoch, stop)
        )
        for epoch in epochs:
            for number, idx in enumerate(loader.epoch_batches(epoch)):
                yield epoch, number, idx

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if info is not None and self.ring is not None and self.ring.slots < 2 * workers:
            logger.info(
                "PatchStream: %d slots for %d workers: batches are copied in the main "
                "process (give slots >= num_workers * (prefetch_factor + 2))",
                self.ring.slots,
                workers,
            )
        for g, (epoch, number, idx) in enumerate(self._plan()):
            if g % self.world_size != self.rank:
                continue
            if (g // self.world_size) % workers != worker:
                continue
            if info is None:
                yield batch_to_tensors(self.loader.load_batch(idx, epoch=epoch, number=number))
                continue
            yield self._worker_batch(idx, epoch, number, worker, workers)

    def _worker_batch(
        self, idx: np.ndarray, epoch: int, number: int, worker: int, workers: int
    ) -> Any:
        """Fill a shared slot and return its small record (else a batch in fresh shared memory)."""
        ring = self.ring
        serial = next_serial()
        slot = None if ring is None else ring.claim(worker, workers, serial, self.slot_wait_s)
        if slot is None:
            if ring is not None:
                logger.debug("PatchStream worker %d: no free slot, fresh shared memory", worker)
            # Tensors allocated directly in shared memory (``share_memory_`` would copy).
            shape = self.loader.batch_shape(len(idx))
            images = shared_empty(shape, self.loader.dtype)
            masks = shared_empty(shape, np.dtype(np.uint8))
            batch = self.loader.load_batch(
                idx, epoch=epoch, number=number, out=(images.numpy(), masks.numpy())
            )
            return {**batch_to_tensors(batch), "image": images, "mask": masks}
        try:
            batch = self.loader.load_batch(
                idx, epoch=epoch, number=number, out=ring.arrays(slot, len(idx))
            )
        except BaseException:
            ring.release(slot, serial)
            raise
        ring.publish(slot, serial)
        meta = {
            "index": np.asarray(batch.indices, np.int64),
            "origin": np.asarray(batch.origins, np.int64),
            "epoch": batch.epoch,
            "number": batch.number,
            "boxes": batch.boxes,
            "params": batch.params,
        }
        return slot_record(ring, slot, serial, worker, workers, len(idx), meta)
