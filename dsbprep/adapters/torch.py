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

How a worker's batch reaches the main process (``PatchStream``)
----------------------------------------------------------------
Fresh shared memory is slow to allocate (on the development VM, 25 to 75 ms for a 28 MB
batch), so a stream allocates a ring of ``slots`` batch buffers in shared memory once,
in its constructor: fork-started workers inherit them, spawn-started ones receive them
by file descriptor. A worker claims a free slot of its own share (slots ``w, w + W,
...`` for worker ``w`` of ``W``), fills it with the batch and sends only a small record
(slot, serial number, case ids, origins, parameters). The main process turns the record
back into tensors while unpickling it, so a plain ``DataLoader`` yields ordinary dicts.

Lifetime. Each slot has a state in a shared header: free, being written, written
(record on its way), leased (handed out). The ``image`` and ``mask`` tensors handed out
are views of the slot that keep a lease object alive; the slot becomes free again only
when the last tensor, view or array made from them is garbage (CPython reference
counts), so a batch the caller keeps is never overwritten. Workers only ever write free
slots (claimed under a file lock, so two iterations over one stream cannot take the same
slot). When handing out a view would leave a worker without any slot (the caller holds
many batches, e.g. ``list(dataloader)``), the main process hands out a copy instead and
frees the slot at once, so workers never wait on the caller. If a worker finds no free
slot within ``slot_wait_s`` (e.g. another live iterator over the same stream holds
them), it sends that batch the old way, in fresh shared memory. Slots left "written" by
workers that no longer exist (an abandoned iterator) are reclaimed.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np

try:
    import torch
    from torch.utils.data import (
        Dataset,
        IterableDataset,
        Sampler,
        default_convert,
        get_worker_info,
    )
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "dsbprep.adapters.torch needs PyTorch: pip install 'dsbprep[torch]' "
        "(on the project machines: pip install torch==2.13.0, a CPU build)"
    ) from err

from ..loader import Batch, BatchLoader, Sample, epoch_order

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
#: Poll interval (seconds) of a worker waiting for a slot.
_POLL_S = 0.0005
#: Slot states (header column ``_STATE``).
_FREE, _WRITING, _WRITTEN, _LEASED = 0, 1, 2, 3
#: Header columns: state, pid of the writing worker, serial number of the batch in it.
_STATE, _PID, _SERIAL = 0, 1, 2
_HEADER_COLUMNS = 3
#: Bits of a serial number taken by the per-process counter (the pid fills the rest).
_COUNTER_BITS = 32
#: Rings of this process by token, for turning records back into tensors.
_RINGS: weakref.WeakValueDictionary[str, _SlotRing] = weakref.WeakValueDictionary()
_COUNTER = itertools.count()


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
        self.ring = _SlotRing(int(slots), shape, self.loader.dtype) if int(slots) else None

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
        serial = (os.getpid() << _COUNTER_BITS) | (next(_COUNTER) % (1 << _COUNTER_BITS))
        slot = None if ring is None else ring.claim(worker, workers, serial, self.slot_wait_s)
        if slot is None:
            if ring is not None:
                logger.debug("PatchStream worker %d: no free slot, fresh shared memory", worker)
            # Tensors allocated directly in shared memory (``share_memory_`` would copy).
            shape = self.loader.batch_shape(len(idx))
            images = _shared_empty(shape, self.loader.dtype)
            masks = _shared_empty(shape, np.dtype(np.uint8))
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
        return _SlotRecord(ring.token, slot, serial, worker, workers, len(idx), meta)


def _shared_empty(shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
    """An uninitialised tensor allocated directly in shared memory."""
    tdtype = torch.from_numpy(np.empty(0, dtype)).dtype
    numel = int(np.prod(shape))
    try:
        storage = torch.UntypedStorage._new_shared(numel * np.dtype(dtype).itemsize)
    except (AttributeError, RuntimeError):  # pragma: no cover - older/newer torch
        return torch.empty(shape, dtype=tdtype).share_memory_()
    return torch.empty(0, dtype=tdtype).set_(storage).view(shape)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie counts as alive: it is reaped later)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's process
        return True
    return True


def _unlink_lock(path: str, owner: int) -> None:
    if os.getpid() == owner:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class _SlotRing:
    """``slots`` batch buffers (images, masks) in shared memory plus a state header.

    The header (``slots`` x 3 int64, shared) holds each slot's state, the pid of the
    worker that wrote it and the batch's serial number. Transitions: a worker takes
    FREE -> WRITING under the ring's file lock (or a WRITING/WRITTEN slot whose writer
    no longer exists), then WRITING -> WRITTEN; the main process takes WRITTEN -> LEASED
    when it unpickles the record (or straight back to FREE after copying), and the lease
    object takes LEASED -> FREE when the last reference to the handed-out tensors dies.
    """

    def __init__(self, slots: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.token = uuid.uuid4().hex
        self.slots = int(slots)
        self.images = _shared_empty((self.slots, *shape), np.dtype(dtype)).zero_()
        self.masks = _shared_empty((self.slots, *shape), np.dtype(np.uint8)).zero_()
        self.header = _shared_empty((self.slots, _HEADER_COLUMNS), np.dtype(np.int64)).zero_()
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, self.lock_path = tempfile.mkstemp(prefix="dsbprep-ring-", suffix=".lock", dir=folder)
        os.close(fd)
        weakref.finalize(self, _unlink_lock, self.lock_path, os.getpid())
        self._attach()

    def _attach(self) -> None:
        self._images, self._masks = self.images.numpy(), self.masks.numpy()
        self._header = self.header.numpy()
        self._lock_fd: int | None = None
        self._lock_pid: int | None = None
        # A copy unpickled in the owner's own process must not replace the owner.
        _RINGS.setdefault(self.token, self)

    def __getstate__(self) -> dict[str, Any]:
        # Tensors go by file descriptor through torch's multiprocessing pickler (a plain
        # pickle would copy them: the main process then detects the foreign header).
        keys = ("token", "slots", "images", "masks", "header", "lock_path")
        return {k: self.__dict__[k] for k in keys}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._attach()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock_pid != os.getpid():  # a file lock must be opened by each process
            self._lock_fd = os.open(self.lock_path, os.O_RDWR)
            self._lock_pid = os.getpid()
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def claim(self, worker: int, workers: int, serial: int, wait_s: float) -> int | None:
        """A free slot of ``worker``'s share, marked WRITING (None after ``wait_s`` seconds)."""
        share = range(worker, self.slots, workers)
        if not share:
            return None
        me, header = os.getpid(), self._header
        deadline = time.monotonic() + wait_s
        while True:
            try:
                with self._locked():
                    for s in share:
                        state, pid = int(header[s, _STATE]), int(header[s, _PID])
                        if state == _FREE or (
                            state in (_WRITING, _WRITTEN) and pid != me and not _alive(pid)
                        ):
                            header[s, _PID], header[s, _SERIAL] = me, serial
                            header[s, _STATE] = _WRITING
                            return s
            except FileNotFoundError:  # the stream that owns the ring is gone
                return None
            if time.monotonic() >= deadline:
                return None
            time.sleep(_POLL_S)

    def arrays(self, slot: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` samples of a slot's (images, masks), as numpy views."""
        return self._images[slot, :n], self._masks[slot, :n]

    def publish(self, slot: int, serial: int) -> None:
        """Mark a filled slot WRITTEN (its record is about to be sent)."""
        self._header[slot, _STATE] = _WRITTEN

    def release(self, slot: int, serial: int) -> None:
        """Give back a slot this worker claimed but could not fill."""
        if int(self._header[slot, _SERIAL]) == serial:
            self._header[slot, _STATE] = _FREE

    def hand_out(
        self, slot: int, serial: int, worker: int, workers: int, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Main process: the (images, masks) tensors of a received record.

        Views of the slot under a lease, or copies when a lease would leave the
        writing worker's share without a slot that is not leased.
        """
        header = self._header
        if int(header[slot, _STATE]) != _WRITTEN or int(header[slot, _SERIAL]) != serial:
            raise RuntimeError(
                f"PatchStream: shared batch slot {slot} does not hold the batch its record "
                f"names (state {int(header[slot, _STATE])}, serial {int(header[slot, _SERIAL])}"
                f" instead of {serial}); was the stream pickled outside a DataLoader?"
            )
        images, masks = self.arrays(slot, n)
        leased = int(np.count_nonzero(header[worker::workers, _STATE] == _LEASED))
        if leased + 1 >= len(range(worker, self.slots, workers)):
            out = torch.from_numpy(images.copy()), torch.from_numpy(masks.copy())
            header[slot, _STATE] = _FREE
            return out
        header[slot, _STATE] = _LEASED
        lease = _Lease(self, slot, serial)
        return (
            torch.from_numpy(np.asarray(_LeasedArray(lease, images))),
            torch.from_numpy(np.asarray(_LeasedArray(lease, masks))),
        )


class _Lease:
    """Frees its slot when garbage: every tensor handed out from the slot references it."""

    __slots__ = ("ring", "slot", "serial", "pid")

    def __init__(self, ring: _SlotRing, slot: int, serial: int) -> None:
        self.ring, self.slot, self.serial, self.pid = ring, slot, serial, os.getpid()

    def __del__(self) -> None:
        if os.getpid() != self.pid:  # a forked child's copy: the parent owns the lease
            return
        header = self.ring._header
        if header[self.slot, _STATE] == _LEASED and header[self.slot, _SERIAL] == self.serial:
            header[self.slot, _STATE] = _FREE


class _LeasedArray:
    """Exposes a slot's array to ``np.asarray`` while holding the lease (the array's base)."""

    __slots__ = ("lease", "__array_interface__")

    def __init__(self, lease: _Lease, array: np.ndarray) -> None:
        self.lease = lease
        self.__array_interface__ = array.__array_interface__


class _SlotRecord:
    """What a worker sends instead of a batch: unpickling it in the main process makes
    the batch's tensors (:meth:`_SlotRing.hand_out`)."""

    __slots__ = ("args",)

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _receive, self.args


def _receive(
    token: str, slot: int, serial: int, worker: int, workers: int, n: int, meta: dict[str, Any]
) -> dict[str, Any]:
    ring = _RINGS.get(token)
    if ring is None:
        raise RuntimeError(
            f"PatchStream: a batch record names shared slots {token} that this process "
            "does not have (records are only read by the process that made the stream)"
        )
    images, masks = ring.hand_out(slot, serial, worker, workers, n)
    # The conversion a DataLoader applies to what a dataset yields (boxes become tensors),
    # done here because the worker sent an opaque record: the same dict as with 0 workers.
    return {"image": images, "mask": masks, **default_convert(meta)}
