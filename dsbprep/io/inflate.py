"""Bounded decompression: inflate deflate, gzip, zlib or bzip2 data up to a byte limit, never further.

Every compressed payload dsbprep reads (a Deflated Explicit VR DICOM body, a NRRD's
gzip/bzip2 data, a MetaImage's zraw data, a ``.nii.gz``) goes through :func:`inflate`
with a limit taken from what the header declares. A decompression bomb (a few MB that
inflate to gigabytes) therefore costs at most ``limit`` bytes of memory - or none at all
with ``keep=False``, which only counts - and ends in :class:`InflateLimitError`.
"""

from __future__ import annotations

import bz2
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

__all__ = ["CODECS", "InflateLimitError", "inflate"]

#: Compressed bytes read from the file per step.
_READ_CHUNK = 1 << 20
#: Inflated bytes produced per step when only counting (keep=False).
_COUNT_CHUNK = 4 << 20
#: Codec name -> zlib wbits (deflate: raw stream; gzip; zlib; auto = gzip or zlib header).
_WBITS = {"deflate": -zlib.MAX_WBITS, "gzip": zlib.MAX_WBITS | 16, "zlib": zlib.MAX_WBITS,
          "auto": zlib.MAX_WBITS | 32}
#: Every codec :func:`inflate` knows.
CODECS = (*_WBITS, "bzip2")


class InflateLimitError(ValueError):
    """Compressed data inflate past the size the header declares (or are cut short)."""


class _Bz2:
    """bz2's decompressor behind zlib's ``decompress(data, max_length)`` interface."""

    unconsumed_tail = b""  # bz2 keeps unused input inside; ``pending`` says output is waiting

    def __init__(self) -> None:
        self._d = bz2.BZ2Decompressor()
        self.pending = False

    @property
    def eof(self) -> bool:
        return self._d.eof

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._d.decompress(data, max_length)
        self.pending = not (self._d.needs_input or self._d.eof)
        return out


def _decompressor(codec: str):
    if codec == "bzip2":
        return _Bz2()
    try:
        return zlib.decompressobj(_WBITS[codec])
    except KeyError:
        raise ValueError(f"unknown codec {codec!r}; expected one of {', '.join(CODECS)}") from None


def _steps(fh: BinaryIO, d, room: Callable[[], int]) -> Iterator[bytes]:
    """Yield inflated pieces; ``room()`` is how many more bytes may come (always >= 1)."""
    while True:
        chunk = fh.read(_READ_CHUNK)
        pending = chunk
        while True:
            out = d.decompress(pending, room())
            if out:
                yield out
            pending = d.unconsumed_tail
            if not pending and not getattr(d, "pending", False):
                break
        if not chunk or d.eof:
            return


def inflate(
    fh: BinaryIO,
    codec: str,
    limit: int,
    *,
    keep: bool = True,
    truncate: bool = False,
    exact: bool = False,
    name: str = "",
) -> bytes | int:
    """Decompress ``fh`` (from its position) up to ``limit`` bytes.

    Parameters
    ----------
    fh : binary file object
        Positioned at the start of the compressed stream.
    codec : {"deflate", "gzip", "zlib", "auto", "bzip2"}
        "deflate" is a raw deflate stream (DICOM), "auto" a gzip or zlib one (MetaImage zraw).
    limit : int
        Largest number of inflated bytes accepted.
    keep : bool
        Return the bytes (at most ``limit`` of them held), or only count them (constant memory).
    truncate : bool
        At the limit, return what was inflated so far instead of raising (a header read
        that needs only the start of the stream).
    exact : bool
        Also raise when the stream ends short of ``limit`` (the header's declared size).
    name : str
        File named in the error messages.

    Returns
    -------
    bytes or int
        The inflated bytes (``keep``), else their number.

    Raises
    ------
    InflateLimitError
        More than ``limit`` bytes (unless ``truncate``), or fewer with ``exact``.
    zlib.error, OSError, EOFError
        Corrupt compressed data.

    Examples
    --------
    >>> import io, zlib
    >>> bomb = zlib.compress(bytes(10**6))
    >>> len(bomb) < 2000, inflate(io.BytesIO(bomb), "zlib", 10**6, keep=False)
    (True, 1000000)
    >>> inflate(io.BytesIO(bomb), "zlib", 1000)
    Traceback (most recent call last):
    ...
    dsbprep.io.inflate.InflateLimitError: zlib data inflate past 1000 bytes
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    d = _decompressor(codec)
    out = bytearray()
    total = 0

    def room() -> int:
        return max(1, min(limit + 1 - total, _COUNT_CHUNK))

    for piece in _steps(fh, d, room):
        total += len(piece)
        if total > limit:
            if truncate and keep:
                out += piece[: len(piece) - (total - limit)]
                return bytes(out)
            where = f"{name}: " if name else ""
            raise InflateLimitError(f"{where}{codec} data inflate past {limit} bytes")
        if keep:
            out += piece
    if exact and total != limit:
        where = f"{name}: " if name else ""
        raise InflateLimitError(
            f"{where}{codec} data end after {total} bytes, the header declares {limit}: truncated"
        )
    return bytes(out) if keep else total
