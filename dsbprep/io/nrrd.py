"""NRRD (``.nrrd``/``.nhdr``) -> :class:`~dsbprep.io.volume.Volume` in dsbprep's (z, y, x) LPS frame.

The header is checked by :func:`dsbprep.io.headers.check_volume_file` (detached data
inside the folder, declared size under the cap) and parsed by pynrrd; the data are
decoded here, exactly the declared number of bytes: raw data are read with a count,
gzip/bzip2 data through :func:`dsbprep.io.inflate.inflate` with the declared size as
its limit. (pynrrd's own reader reads a raw data file to its end and inflates all of a
compressed one; ITK's NRRD reader, SimpleITK's, has no bzip2.)

Geometry: ``space directions`` (one row per NRRD axis, fastest = x) and ``space
origin`` are converted to world (z, y, x) = (S, P, L); ``RAS``/``LAS`` spaces are
flipped to LPS.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import VolumeFileError
from .dicom import MAX_VOXELS
from .headers import DataLayout, _nrrd_header, check_volume_file
from .inflate import inflate
from .volume import Volume

__all__ = ["read_nrrd_volume"]

#: Sign that turns each NRRD space axis (x, y, z) into LPS.
_SPACE_SIGNS = {
    "left-posterior-superior": (1, 1, 1),
    "lps": (1, 1, 1),
    "right-anterior-superior": (-1, -1, 1),
    "ras": (-1, -1, 1),
    "left-anterior-superior": (1, -1, 1),
    "las": (1, -1, 1),
}


def _data(layout: DataLayout, dtype: np.dtype) -> np.ndarray:
    """The declared voxels, C order (z, y, x); never more bytes than declared are decoded."""
    count = layout.n_voxels
    with open(layout.data_file, "rb") as fh:
        if layout.codec is None:
            if layout.offset == -1:
                fh.seek(-layout.nbytes, os.SEEK_END)
            else:
                fh.seek(layout.offset)
            data = np.fromfile(fh, dtype, count=count)
        else:
            fh.seek(layout.offset)
            try:
                raw = inflate(fh, layout.codec, layout.skip + layout.nbytes, exact=True,
                              name=layout.data_file.name)
            except (ValueError, OSError, EOFError, zlib.error) as err:  # InflateLimitError too
                raise VolumeFileError(f"{layout.data_file}: {err}") from err
            data = np.frombuffer(raw, dtype, count=count, offset=layout.skip)
    if data.size != count:
        raise VolumeFileError(f"{layout.data_file}: {data.size} of {count} voxels read: truncated")
    return data.reshape(layout.sizes[::-1])


def _rows(header: dict, ndim: int, signs: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    """Space direction of each NRRD axis (fastest first) in LPS (x, y, z), mm per voxel."""
    directions = header.get("space directions")
    if directions is not None:
        rows = np.asarray(directions, float)
        if rows.shape != (ndim, 3) or not np.all(np.isfinite(rows)):
            raise VolumeFileError(
                f"{path}: 'space directions' {directions!r} are not {ndim} 3-D vectors"
            )
        return rows * signs
    spacings = np.asarray(header.get("spacings", [1.0] * ndim), float)
    notes.append("no 'space directions': axis-aligned, 'spacings' (or 1 mm) used")
    return np.diag(np.r_[spacings, [1.0] * (3 - ndim)])[:ndim]


def read_nrrd_volume(path: str | os.PathLike, *, max_voxels: int = MAX_VOXELS) -> Volume:
    """Read a 2-D or 3-D scalar NRRD as a (z, y, x) :class:`Volume` in dsbprep's LPS frame.

    Parameters
    ----------
    path : str or Path
        ``.nrrd`` or ``.nhdr`` file.
    max_voxels : int
        Refuse a header declaring more voxels, before reading.

    Returns
    -------
    Volume
        A 2-D file becomes one slice (1, y, x).

    Raises
    ------
    VolumeFileError
        (a :class:`~dsbprep.errors.MaskSourceError`) Unreadable or refused file (see
        :func:`dsbprep.io.headers.check_volume_file`), not 2-D/3-D scalar, or degenerate
        space directions.

    Examples
    --------
    >>> v = read_nrrd_volume("ct-64.nrrd")  # doctest: +SKIP
    >>> v.array.shape, v.spacing  # doctest: +SKIP
    ((79, 64, 64), (3.98734177, 4.171872, 4.171872))
    """
    from nrrd.reader import _determine_datatype

    path = Path(path)
    layout = check_volume_file(path, max_voxels=max_voxels, data=False)
    header, _ = _nrrd_header(path)
    ndim = len(layout.sizes)
    if ndim not in (2, 3):
        raise VolumeFileError(
            f"{path}: expected a 2-D or 3-D scalar NRRD, got dimension {ndim}, "
            f"sizes {list(layout.sizes)}"
        )
    data = _data(layout, _determine_datatype(header))
    space = str(header.get("space", "")).lower()
    notes: list[str] = []
    if space not in _SPACE_SIGNS:
        notes.append(f"space {space or '(none)'!r}: axes taken as LPS")
    signs = np.asarray(_SPACE_SIGNS.get(space, (1, 1, 1)), float)
    rows = _rows(header, ndim, signs, path, notes)
    origin_xyz = np.asarray(header.get("space origin", np.zeros(3)), float).reshape(-1)
    if origin_xyz.size != 3 or not np.all(np.isfinite(origin_xyz)):
        raise VolumeFileError(
            f"{path}: 'space origin' {header.get('space origin')!r} is not a 3-D point"
        )
    if ndim == 2:
        data = data[None]
        normal = np.cross(rows[0], rows[1])
        rows = np.vstack([rows, normal / max(np.linalg.norm(normal), 1e-12)])
    vectors = rows[::-1, ::-1]  # C axis k (z, y, x) is NRRD axis 2 - k; world (x,y,z) -> (z,y,x)
    spacing = np.linalg.norm(vectors, axis=1)
    if np.any(spacing <= 0):
        raise VolumeFileError(f"{path}: a 'space directions' vector has zero length")
    return Volume(
        array=np.ascontiguousarray(data),
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(v) for v in (origin_xyz * signs)[::-1]),
        direction=(vectors / spacing[:, None]).T,
        path=str(path),
        notes=notes,
    )
