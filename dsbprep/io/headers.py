"""Header checks run before a volume file is read: where its data are, and how big they are.

:func:`check_volume_file` reads a MetaImage (``.mhd``/``.mha``), NIfTI (``.nii``/``.nii.gz``)
or NRRD (``.nrrd``/``.nhdr``) header itself - a bounded number of bytes - and refuses,
with a :class:`~dsbprep.errors.VolumeFileError` naming the file and the reason:

- detached data (MetaImage ``ElementDataFile``, NRRD ``data file``) that is not one regular
  file inside the folder of the header: absolute paths, ``..``, devices, FIFOs, symlinks
  that resolve outside, file lists and patterns are refused;
- 4-D (a 4th axis longer than 1) and vector (several components per voxel) images;
- a declared size above ``max_voxels`` - before anything is allocated;
- raw data shorter than declared (truncated), and compressed data that inflate past the
  declared size or end short of it, counted with :func:`dsbprep.io.inflate.inflate`
  without keeping the bytes (constant memory).

Only then does a reader (SimpleITK, or :mod:`dsbprep.io.nrrd`) open the file.
"""

from __future__ import annotations

import gzip
import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import VolumeFileError
from .inflate import InflateLimitError, inflate

__all__ = ["HEADER_MAX_BYTES", "DataLayout", "check_volume_file", "volume_format"]

#: Longest text header read (MetaImage, NRRD); real ones are under 2 KiB.
HEADER_MAX_BYTES = 64 * 1024
#: Format name by file name ending.
_FORMATS = {".mhd": "metaimage", ".mha": "metaimage", ".nii": "nifti", ".nii.gz": "nifti",
            ".nrrd": "nrrd", ".nhdr": "nrrd"}
#: Bytes per voxel of MetaImage element types.
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
              "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8,
              "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}
#: NIfTI datatypes with several components per voxel (complex, RGB, RGBA).
_NIFTI_VECTOR_TYPES = {32, 128, 1792, 2048, 2304}
#: NIfTI intent codes of vector-valued images (NIFTI_INTENT_VECTOR, ..._DISPVECT, ..._RGB...).
_NIFTI_VECTOR_INTENTS = {1006, 1007, 2003, 2004}
#: NRRD encodings and the codec that inflates them (None: stored as is).
_NRRD_CODECS = {"raw": None, "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}


@dataclass(frozen=True)
class DataLayout:
    """Where a checked volume file keeps its voxels.

    Attributes
    ----------
    format : str
        "metaimage", "nifti" or "nrrd".
    sizes : tuple of int
        Axis lengths as the header declares them, fastest axis first (x, y, z).
    data_file : pathlib.Path
        The file holding the voxel data (the header itself when attached), resolved.
    offset : int
        Byte offset of the data in ``data_file`` (of the compressed stream when compressed);
        -1: the data end the file (MetaImage HeaderSize -1, NRRD byte skip -1).
    codec : str or None
        Compression (:data:`dsbprep.io.inflate.CODECS`), None for raw data.
    nbytes : int
        Declared size of the voxel data, bytes (after decompression).
    skip : int
        Bytes of the decompressed stream before the voxels (NRRD byte skip; NIfTI vox_offset).
    """

    format: str
    sizes: tuple[int, ...]
    data_file: Path
    offset: int
    codec: str | None
    nbytes: int
    skip: int = 0

    @property
    def n_voxels(self) -> int:
        return math.prod(self.sizes)


def volume_format(path: str | os.PathLike) -> str | None:
    """"metaimage", "nifti", "nrrd" from the file name, or None.

    Examples
    --------
    >>> volume_format("subset0/1.3.6.1.mhd"), volume_format("lung_001.nii.gz"), volume_format("a.dcm")
    ('metaimage', 'nifti', None)
    """
    name = os.fspath(path).lower()
    for suffix in sorted(_FORMATS, key=len, reverse=True):  # .nii.gz before .nii
        if name.endswith(suffix):
            return _FORMATS[suffix]
    return None


def _fail(path: Path, reason: str) -> VolumeFileError:
    return VolumeFileError(f"{path}: {reason}")


def _text_header(path: Path, until: bytes | None) -> tuple[list[str], int]:
    """Lines of a text header and the byte offset where the data start (attached data).

    ``until`` ends the header after a line starting with it (MetaImage ElementDataFile);
    otherwise a blank line (NRRD) or the end of the file (a detached header) ends it.
    """
    with open(path, "rb") as fh:
        head = fh.read(HEADER_MAX_BYTES + 1)
    lines, pos = [], 0
    while pos < len(head):
        end = head.find(b"\n", pos)
        if end < 0:
            if len(head) > HEADER_MAX_BYTES:
                raise _fail(path, f"header longer than {HEADER_MAX_BYTES} bytes")
            end = len(head) - 1
        line = head[pos:end].rstrip(b"\r").decode("latin-1")
        pos = end + 1
        if until is None and not line.strip():
            return lines, pos
        lines.append(line)
        if until is not None and line.lstrip().startswith(until.decode()):
            return lines, pos
    return lines, pos


def _detached(header: Path, name: str, what: str) -> Path:
    """Resolve a detached data file name; it must be a regular file inside the header's folder."""
    name = name.strip()
    if not name or name.upper() == "LIST" or "%" in name or " " in name.strip():
        raise _fail(header, f"{what} {name!r}: file lists and patterns are not supported")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise _fail(header, f"{what} {name!r} must be a relative path inside {header.parent}")
    folder = header.parent.resolve()
    target = (header.parent / rel).resolve()
    if not target.is_relative_to(folder):
        raise _fail(header, f"{what} {name!r} resolves to {target}, outside {folder}")
    try:
        mode = os.stat(target).st_mode
    except OSError as err:
        raise _fail(header, f"{what} {name!r}: {err.strerror or err}") from err
    if not stat.S_ISREG(mode):
        raise _fail(header, f"{what} {name!r} is not a regular file")
    return target


def _check_size(path: Path, sizes: tuple[int, ...], components: int, max_voxels: int) -> None:
    if any(n < 1 for n in sizes):
        raise _fail(path, f"axis lengths {list(sizes)} must be positive")
    if len(sizes) > 3 and any(n > 1 for n in sizes[3:]):
        raise _fail(path, f"{len(sizes)}-D image of sizes {list(sizes)}: only 2-D and 3-D "
                          "images are supported (a 4-D series is several volumes)")
    if components != 1:
        raise _fail(path, f"vector image ({components} components per voxel): only scalar "
                          "images are supported")
    n = math.prod(sizes)
    if n > max_voxels:
        raise _fail(path, f"header declares {' x '.join(map(str, sizes))} = {n} voxels, "
                          f"above max_voxels={max_voxels}")


def _metaimage(path: Path, max_voxels: int) -> DataLayout:
    lines, data_at = _text_header(path, b"ElementDataFile")
    fields = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    try:
        sizes = tuple(int(v) for v in fields["dimsize"].split())
        ndims = int(fields.get("ndims", len(sizes)))
        components = int(fields.get("elementnumberofchannels", "1"))
        itemsize = _MET_BYTES[fields["elementtype"].upper()]
        data_name = fields["elementdatafile"]
        header_size = int(fields.get("headersize", "0"))
    except (KeyError, ValueError) as err:
        raise _fail(path, f"not a readable MetaImage header (missing or bad {err})") from None
    if ndims != len(sizes):
        raise _fail(path, f"NDims {ndims} but DimSize has {len(sizes)} values")
    _check_size(path, sizes, components, max_voxels)
    compressed = fields.get("compresseddata", "false").lower() == "true"
    if data_name.upper() == "LOCAL":
        data_file, offset = path.resolve(), data_at
    else:
        data_file, offset = _detached(path, data_name, "ElementDataFile"), max(header_size, 0)
        offset = -1 if header_size == -1 else offset
    return DataLayout("metaimage", sizes, data_file, offset, "auto" if compressed else None,
                      math.prod(sizes) * itemsize)


def _nifti_fields(head: bytes, path: Path) -> tuple[str, list[int], int, int, int, int]:
    """(endian, dim[0..7], datatype, bitpix, vox_offset, intent_code) of a NIfTI-1/2 header."""
    for endian in "<>":
        (size,) = struct.unpack(endian + "i", head[:4])
        if size == 348 and len(head) >= 348:
            dims = list(struct.unpack(endian + "8h", head[40:56]))
            intent, datatype, bitpix = struct.unpack(endian + "3h", head[68:74])
            return endian, dims, datatype, bitpix, int(struct.unpack(endian + "f", head[108:112])[0]), intent
        if size == 540 and len(head) >= 540:
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dims = list(struct.unpack(endian + "8q", head[16:80]))
            (vox_offset,) = struct.unpack(endian + "q", head[168:176])
            (intent,) = struct.unpack(endian + "i", head[504:508])
            return endian, dims, datatype, bitpix, vox_offset, intent
    raise _fail(path, "not a NIfTI-1 or NIfTI-2 header (sizeof_hdr is not 348 or 540)")


def _nifti(path: Path, max_voxels: int) -> DataLayout:
    gz = path.name.lower().endswith(".gz")
    with open(path, "rb") as fh:
        try:
            head = inflate(fh, "gzip", 540, truncate=True) if gz else fh.read(540)
        except (OSError, EOFError, ValueError) as err:
            raise _fail(path, f"cannot read the NIfTI header: {err}") from err
    _, dims, datatype, bitpix, vox_offset, intent = _nifti_fields(head, path)
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise _fail(path, f"dim[0] = {ndim} is not 1..7")
    sizes = tuple(int(v) for v in dims[1 : ndim + 1])
    if datatype in _NIFTI_VECTOR_TYPES:
        raise _fail(path, f"vector image (NIfTI datatype {datatype}: complex or RGB): only "
                          "scalar images are supported")
    if len(sizes) >= 5 and (sizes[4] > 1 or intent in _NIFTI_VECTOR_INTENTS):
        _check_size(path, sizes[:4], sizes[4], max_voxels)  # dim[5] holds vector components
    _check_size(path, sizes, 1, max_voxels)
    if bitpix <= 0 or bitpix % 8 or vox_offset < 0:
        raise _fail(path, f"bitpix {bitpix} / vox_offset {vox_offset} are not usable")
    nbytes = math.prod(sizes) * bitpix // 8
    if gz:
        return DataLayout("nifti", sizes, path.resolve(), 0, "gzip", nbytes, skip=vox_offset)
    return DataLayout("nifti", sizes, path.resolve(), vox_offset, None, nbytes)


def _nrrd_header(path: Path) -> tuple[dict, int]:
    """pynrrd's parse of the header lines (read here, bounded) and the attached data offset."""
    import nrrd

    lines, data_at = _text_header(path, None)
    try:
        return nrrd.read_header(iter(lines)), data_at
    except (nrrd.NRRDError, ValueError, TypeError, KeyError, IndexError) as err:
        raise _fail(path, f"cannot read as NRRD: {err}") from err


def _nrrd(path: Path, max_voxels: int) -> DataLayout:
    import numpy as np
    from nrrd.reader import _determine_datatype

    header, data_at = _nrrd_header(path)
    try:
        sizes = tuple(int(v) for v in np.atleast_1d(header["sizes"]))
        itemsize = _determine_datatype(header).itemsize
        encoding = str(header.get("encoding", "raw")).lower()
    except (KeyError, ValueError, TypeError) as err:
        raise _fail(path, f"cannot read as NRRD: bad or missing field {err}") from err
    kinds = [str(k).lower() for k in header.get("kinds", [])]
    vector = [i for i, k in enumerate(kinds) if k not in ("domain", "space", "time", "none", "???")]
    if vector:  # a non-spatial axis: vector/RGB components, a list...
        _check_size(path, sizes[:vector[0]] + sizes[vector[0] + 1:], sizes[vector[0]], max_voxels)
    _check_size(path, sizes, 1, max_voxels)
    if encoding not in _NRRD_CODECS:
        raise _fail(path, f"NRRD encoding {encoding!r} is not supported (raw, gzip or bzip2)")
    if int(header.get("line skip", header.get("lineskip", 0))) != 0:
        raise _fail(path, "NRRD 'line skip' is not supported")
    skip = int(header.get("byte skip", header.get("byteskip", 0)))
    name = header.get("data file", header.get("datafile"))
    data_file = path.resolve() if name is None else _detached(path, str(name), "data file")
    offset = data_at if name is None else 0
    codec = _NRRD_CODECS[encoding]
    if codec is None:
        offset = -1 if skip == -1 else offset + max(skip, 0)
        skip = 0
    elif skip < 0:
        raise _fail(path, "byte skip -1 with compressed data is not supported")
    return DataLayout("nrrd", sizes, data_file, offset, codec, math.prod(sizes) * itemsize, skip)


def _check_data(path: Path, layout: DataLayout) -> None:
    """Raw data at least as long as declared; compressed data inflating to exactly that."""
    size = layout.data_file.stat().st_size
    if layout.codec is None:
        have = size if layout.offset == -1 else size - layout.offset
        if have < layout.nbytes:
            raise _fail(path, f"data are truncated: {layout.data_file.name} holds {max(have, 0)} "
                              f"bytes of voxel data, the header declares {layout.nbytes}")
        return
    with open(layout.data_file, "rb") as fh:
        fh.seek(layout.offset)
        try:
            inflate(fh, layout.codec, layout.skip + layout.nbytes, keep=False, exact=True,
                    name=layout.data_file.name)
        except InflateLimitError as err:
            raise _fail(path, f"{err} (header: {' x '.join(map(str, layout.sizes))} voxels)") from err
        except (OSError, EOFError, ValueError, gzip.BadGzipFile) as err:
            raise _fail(path, f"compressed data are corrupt: {err}") from err


def check_volume_file(
    path: str | os.PathLike, *, max_voxels: int, data: bool = True
) -> DataLayout:
    """Check a volume file's header and data before any reader opens it.

    Parameters
    ----------
    path : str or Path
        A ``.mhd``, ``.mha``, ``.nii``, ``.nii.gz``, ``.nrrd`` or ``.nhdr`` file.
    max_voxels : int
        Largest accepted number of voxels (:data:`dsbprep.io.dicom.MAX_VOXELS` by default
        in the readers; ``[dicom] max_voxels`` in a build).
    data : bool
        Also check the data's length (raw) or inflated length (compressed, counted
        without keeping the bytes). False for a reader that decodes with the same limits.

    Returns
    -------
    DataLayout

    Raises
    ------
    VolumeFileError
        Naming the file: see the module docstring for what is refused.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "x.mhd").write_text("NDims = 3\\nDimSize = 2 2 2\\nElementType = MET_SHORT\\n"
    ...                                   "ElementDataFile = /etc/passwd\\n")
    >>> check_volume_file(folder / "x.mhd", max_voxels=100)
    Traceback (most recent call last):
    ...
    dsbprep.errors.VolumeFileError: .../x.mhd: ElementDataFile '/etc/passwd' must be a relative path inside ...
    """
    path = Path(path)
    kind = volume_format(path)
    if kind is None:
        raise _fail(path, "not a volume file (.mhd, .mha, .nii, .nii.gz, .nrrd, .nhdr)")
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise _fail(path, f"cannot open: {err.strerror or err}") from err
    if not stat.S_ISREG(mode):
        raise _fail(path, "not a regular file")
    layout = {"metaimage": _metaimage, "nifti": _nifti, "nrrd": _nrrd}[kind](path, max_voxels)
    if data:
        _check_data(path, layout)
    return layout
