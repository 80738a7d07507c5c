"""The shared-memory batch ring of :class:`dsbprep.adapters.torch.PatchStream`.

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
import os
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_convert

__all__ = ["SlotRing", "next_serial", "shared_empty", "slot_record"]

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
_RINGS: weakref.WeakValueDictionary[str, SlotRing] = weakref.WeakValueDictionary()
_COUNTER = itertools.count()


def next_serial() -> int:
    """A batch serial number unique across this machine's processes (pid + counter)."""
    return (os.getpid() << _COUNTER_BITS) | (next(_COUNTER) % (1 << _COUNTER_BITS))


def slot_record(ring: SlotRing, slot: int, serial: int, worker: int, workers: int, n: int, meta):
    """What a worker sends for a filled slot: unpickled in the main process as the batch dict."""
    return _SlotRecord(ring.token, slot, serial, worker, workers, n, meta)


def shared_empty(shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
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


class SlotRing:
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
        self.images = shared_empty((self.slots, *shape), np.dtype(dtype)).zero_()
        self.masks = shared_empty((self.slots, *shape), np.dtype(np.uint8)).zero_()
        self.header = shared_empty((self.slots, _HEADER_COLUMNS), np.dtype(np.int64)).zero_()
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

    def __init__(self, ring: SlotRing, slot: int, serial: int) -> None:
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
    the batch's tensors (:meth:`SlotRing.hand_out`)."""

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
