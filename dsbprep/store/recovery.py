"""Crash recovery and locking for the writer: lock file, temp file, superblock repair, full disk.

* ``WriterLock``: an exclusive ``flock`` on ``<file>.lock``, opened with
  ``O_NOFOLLOW`` (a pre-planted symlink is refused, not followed).
* ``create_temp``: the ``<file>.creating-<pid>-XXXX`` name a new file is built under
  (``mkstemp`` in the target folder: ``O_CREAT | O_EXCL``, so never a planted link).
* ``clear_status_flags``: what ``h5clear -s`` does, through the HDF5 library h5py
  loaded (ctypes), for a file whose writer died.
* ``fit_to_superblock``: drop the tail reserved for appends, or refill a file that a
  failed write left shorter than its superblock says.
* ``storage_errno``: whether an error means "the file cannot grow".
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import logging
import os
import re
import stat
import struct
import tempfile

import h5py

from ..errors import DatasetFormatError

__all__ = [
    "FILES_LEFT_OPEN",
    "FULL_ERRNOS",
    "WriterLock",
    "clear_status_flags",
    "create_temp",
    "fit_to_superblock",
    "storage_errno",
]

logger = logging.getLogger(__name__)

#: errno values that mean "the file cannot grow": no space, file too large (RLIMIT_FSIZE), quota.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
#: h5py reports HDF5 write failures as RuntimeError/OSError whose text holds "errno = N".
_ERRNO_IN_TEXT = re.compile(r"errno\s*=\s*(\d+)")
#: HDF5 superblock signature; versions 2 and 3 store the end-of-file address at byte 28.
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

#: Files whose HDF5 close failed after a failed write: the HDF5 library still holds them and
#: may crash while shutting down at interpreter exit (see ``python -m dsbprep.build``).
FILES_LEFT_OPEN: list[str] = []


def storage_errno(err: BaseException) -> int | None:
    """The errno of ``err`` when it means "the file cannot grow", else None."""
    number = getattr(err, "errno", None)
    if number in FULL_ERRNOS:
        return number
    for match in _ERRNO_IN_TEXT.finditer(str(err)):
        if int(match.group(1)) in FULL_ERRNOS:
            return int(match.group(1))
    return None


def create_temp(path: str) -> tuple[int, str]:
    """Create ``<path>.creating-<pid>-XXXX`` exclusively in ``path``'s folder; returns (fd, name).

    ``mkstemp`` opens with ``O_CREAT | O_EXCL`` (mode 0600), so a symlink planted
    under the name is never followed.
    """
    folder, name = os.path.split(os.path.abspath(path))
    return tempfile.mkstemp(prefix=f"{name}.creating-{os.getpid()}-", dir=folder)


def _superblock_eof(path: str) -> int | None:
    """End-of-file address stored in a version 2/3 HDF5 superblock at offset 0 (else None)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(48)
    except OSError:
        return None
    if len(head) < 48 or head[:8] != _HDF5_SIGNATURE or head[8] not in (2, 3) or head[9] != 8:
        return None
    base, _ext, eof = struct.unpack_from("<QQQ", head, 12)
    return base + eof


def fit_to_superblock(path: str) -> None:
    """Make the file exactly as long as its superblock says.

    Longer: drops the unused space reserved for appends. Shorter (a write failed after
    HDF5 had recorded the new end of file): extends it with zeros (sparse), so HDF5 opens
    it again; nothing committed lives in that tail, and ``dsbprep.verify`` proves it.
    Call only while holding the writer lock.
    """
    eof = _superblock_eof(path)
    if eof is None:
        return
    size = os.path.getsize(path)
    if size != eof:
        if size < eof:
            logger.warning("%s: %d bytes short of its recorded end (a write failed); zero-filling the "
                           "tail: run `python -m dsbprep.verify` on it", path, eof - size)
        os.truncate(path, eof)


def _hdf5_library() -> ctypes.CDLL:
    """Return the HDF5 shared library h5py itself uses (already loaded in this process)."""
    candidates: list[str] = []
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        for line in maps:
            path = line.rsplit(None, 1)[-1]
            name = os.path.basename(path)
            if name.startswith("libhdf5") and "_hl" not in name and path not in candidates:
                candidates.append(path)
    libs = os.path.join(os.path.dirname(h5py.__file__), os.pardir, "h5py.libs")
    candidates += [p for p in glob.glob(os.path.join(libs, "libhdf5*.so*")) if "_hl" not in p]
    for path in candidates:
        with contextlib.suppress(OSError):
            return ctypes.CDLL(path)
    raise DatasetFormatError("cannot locate the HDF5 library used by h5py to clear status flags")


def clear_status_flags(path: str) -> None:
    """Clear the superblock's 'open for write' flags left by a writer that died.

    The same as the ``h5clear -s`` tool. Called only while this process holds the
    writer lock (see ``WriterLock``), i.e. when no live writer can own the flags.
    """
    lib = _hdf5_library()
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    flag = ctypes.c_bool(True)
    lib.H5Pset.argtypes = [ctypes.c_int64, ctypes.c_char_p, ctypes.c_void_p]
    lib.H5Pset.restype = ctypes.c_int
    if lib.H5Pset(fapl.id, b"clear_status_flags", ctypes.byref(flag)) < 0:
        raise DatasetFormatError(f"{path}: HDF5 refused to clear the status flags")
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR, fapl=fapl)
    fid.close()
    logger.warning("%s: cleared the status flags of a writer that stopped without closing", path)


class WriterLock:
    """An exclusive ``flock`` on ``<file>.lock`` held for the writer's lifetime.

    The kernel releases it when the process dies (even by SIGKILL), so holding it
    proves that no other writer is alive. The lock file is opened with
    ``O_NOFOLLOW`` and must be a regular file: a symlink or device planted under
    its name is refused.
    """

    def __init__(self, path: str) -> None:
        self.path = path + ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`DatasetFormatError` naming the file."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as err:
            why = "is a symlink (refused)" if err.errno == errno.ELOOP else f"cannot be opened: {err}"
            raise DatasetFormatError(f"{self.path[:-5]}: lock file {self.path} {why}") from err
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise DatasetFormatError(f"{self.path[:-5]}: lock file {self.path} is not a regular file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            raise DatasetFormatError(
                f"{self.path[:-5]}: another dsbprep build is writing this file (lock {self.path})"
            ) from err
        self._fd = fd

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
