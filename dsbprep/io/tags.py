"""DICOM tag values as numbers, and ImageOrientationPatient as a dsbprep direction matrix.

Shared by the series reader (:mod:`dsbprep.io.dicom`) and the single-frame reader
(:mod:`dsbprep.io.frame`), so both read tags and orientations the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["to_float", "to_int", "floats", "slice_normal", "orientation_to_direction"]


def to_float(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, text, NaN, inf).

    Examples
    --------
    >>> to_float("2.5"), to_float("nan"), to_float(None)
    (2.5, None, None)
    """
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def to_int(value: Any) -> int | None:
    """An int, or None when ``value`` is not one."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def floats(value: Any, n: int) -> tuple[float, ...] | None:
    """Exactly ``n`` finite floats from a multi-valued tag, or None.

    Examples
    --------
    >>> floats(["1", "0", "0"], 3), floats([1, 2], 3), floats(None, 2)
    ((1.0, 0.0, 0.0), None, None)
    """
    try:
        items = list(value)
    except TypeError:
        return None
    if len(items) != n:
        return None
    out = tuple(to_float(v) for v in items)
    return None if any(v is None for v in out) else out  # type: ignore[return-value]


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit slice normal (LPS x, y, z) of an ImageOrientationPatient (row, then column cosines).

    Raises
    ------
    ValueError
        The row and column cosines are parallel (or zero).
    """
    row = np.asarray(orientation[:3], float)
    col = np.asarray(orientation[3:], float)
    n = np.cross(row, col)
    norm = np.linalg.norm(n)
    if norm == 0:
        raise ValueError("row and column direction cosines are parallel")
    return n / norm


def orientation_to_direction(
    orientation: Sequence[float] | None, normal: np.ndarray | None = None
) -> np.ndarray:
    """dsbprep's direction matrix of a slice stack: columns = world (z, y, x) of index (z, y, x).

    Index z runs along ``normal`` (default: row x column), index y along the column cosine
    (down the rows), index x along the row cosine; world (z, y, x) is LPS reversed.
    A missing or degenerate orientation gives the identity (axial, as stored).

    Examples
    --------
    >>> orientation_to_direction([1, 0, 0, 0, 1, 0]).tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    >>> orientation_to_direction([0, 1, 0, 0, 0, -1])[:, 0].tolist()  # sagittal: normal is -x (right)
    [0.0, 0.0, -1.0]
    """
    if orientation is None:
        return np.eye(3)
    row = np.asarray(orientation[:3], float)
    col = np.asarray(orientation[3:], float)
    if normal is None:
        try:
            normal = slice_normal(orientation)
        except ValueError:
            return np.eye(3)
    return np.stack([normal[::-1], col[::-1], row[::-1]], axis=1).astype(np.float64)
