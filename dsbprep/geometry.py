"""Voxel <-> world coordinates, bounding boxes and exact 2-D convex hulls of masks.

Everything is in (z, y, x) order: ``origin`` is the world position (mm, DICOM's
LPS patient frame written as (S, P, L)... i.e. (z, y, x)) of voxel [0, 0, 0],
``spacing`` the voxel size in mm, and column k of the 3x3 ``direction`` the world
unit vector of index axis k, so that::

    world = origin + direction @ (index * spacing)

LUNA16's ``annotations.csv`` (coordX, coordY, coordZ) is the same frame in the
other order: pass ``(coordZ, coordY, coordX)``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "bounding_box",
    "convex_hull_2d",
    "erode_cross_in_plane",
    "expand_blocks",
    "hull_vertices",
    "points_in_hull",
    "voxel_to_world",
    "world_to_voxel",
]


def _parts(origin, spacing, direction):
    origin = np.asarray(origin, float).reshape(3)
    spacing = np.asarray(spacing, float).reshape(3)
    direction = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
    if np.any(spacing <= 0):
        raise ValueError(f"spacing must be positive, got {spacing.tolist()}")
    return origin, spacing, direction


def voxel_to_world(index, origin, spacing, direction=None) -> np.ndarray:
    """World (z, y, x) mm of voxel indices ``index`` (..., 3), fractional allowed.

    Examples
    --------
    >>> voxel_to_world([2, 0, 1], origin=(-340, -10, 5), spacing=(2.5, 0.7, 0.7)).tolist()
    [-335.0, -10.0, 5.7]
    """
    origin, spacing, direction = _parts(origin, spacing, direction)
    index = np.asarray(index, float)
    return origin + (index * spacing) @ direction.T


def world_to_voxel(world, origin, spacing, direction=None) -> np.ndarray:
    """Fractional voxel indices (..., 3) of world (z, y, x) mm points; inverse of :func:`voxel_to_world`.

    Examples
    --------
    >>> world_to_voxel([-335.0, -10.0, 5.7], origin=(-340, -10, 5), spacing=(2.5, 0.7, 0.7)).round(6).tolist()
    [2.0, 0.0, 1.0]
    """
    origin, spacing, direction = _parts(origin, spacing, direction)
    world = np.asarray(world, float)
    return np.linalg.solve(direction, (world - origin).T).T / spacing


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of a non-empty boolean array, one slice per axis.

    Projects along the first axis over the whole array once, then works only on
    the occupied range of it (for a lung mask, a fraction of the volume), instead
    of ``find_objects`` on a uint8 copy of everything.

    Raises
    ------
    ValueError
        The mask has no set element.

    Examples
    --------
    >>> m = np.zeros((4, 5, 6), bool); m[1:3, 2, 3:5] = True
    >>> bounding_box(m)
    (slice(1, 3, None), slice(2, 3, None), slice(3, 5, None))
    """
    mask = np.asarray(mask, bool)
    hit = np.flatnonzero(mask.any(axis=tuple(range(1, mask.ndim))) if mask.ndim > 1 else mask)
    if hit.size == 0:
        raise ValueError("bounding box of an empty mask")
    first = slice(int(hit[0]), int(hit[-1]) + 1)
    if mask.ndim == 1:
        return (first,)
    return (first,) + bounding_box(mask[first].any(axis=0))


def hull_vertices(image: np.ndarray, r0: int = 0, c0: int = 0) -> np.ndarray:
    """Vertices (doubled integer coordinates, in order) of the convex hull of ``image``'s pixels.

    As skimage's ``convex_hull_image``, each True pixel enters as the four midpoints of
    its edges (centre +- 0.5 along each axis); only the first and last pixel of every row
    and column can contribute. Coordinates are doubled to stay integers; ``(r0, c0)`` is
    added first.

    Examples
    --------
    >>> hull_vertices(np.ones((1, 1), bool)).tolist()
    [[-1, 0], [0, -1], [1, 0], [0, 1]]
    """
    nr, nc = image.shape
    r = np.flatnonzero(image.any(axis=1))
    c = np.flatnonzero(image.any(axis=0))
    first = image[r].argmax(axis=1)
    last = nc - 1 - image[r, ::-1].argmax(axis=1)
    top = image[:, c].argmax(axis=0)
    bottom = nr - 1 - image[::-1, c].argmax(axis=0)
    pts = np.concatenate(
        [np.stack(p, axis=1) for p in ((r, first), (r, last), (top, c), (bottom, c))]
    ).astype(np.int64)
    pts = (pts + [r0, c0]) * 2
    diamond = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int64)
    pts = (pts[:, None, :] + diamond).reshape(-1, 2) + 1  # >= 0 for the key
    width = int(pts[:, 1].max()) + 1
    key = np.unique(pts[:, 0] * width + pts[:, 1])
    pts = np.stack([key // width, key % width], axis=1) - 1
    from scipy.spatial import ConvexHull

    return pts[ConvexHull(pts).vertices]


def points_in_hull(vertices: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """bool per pixel (rows, cols): centre inside or on the hull (integer arithmetic, exact)."""
    p = np.stack([rows, cols], axis=1).astype(np.int64) * 2
    edge = np.roll(vertices, -1, axis=0) - vertices
    rel = p[:, None, :] - vertices[None, :, :]
    cross = edge[None, :, 0] * rel[:, :, 1] - edge[None, :, 1] * rel[:, :, 0]
    return np.all(cross >= 0, axis=1) | np.all(cross <= 0, axis=1)


def convex_hull_2d(mask: np.ndarray) -> np.ndarray:
    """Filled convex hull of a 2-D boolean image, equal to skimage's ``convex_hull_image``.

    Exact: the hull's vertices are integers (doubled coordinates, :func:`hull_vertices`)
    and each row is filled over the interval its edges allow, computed with integer
    floor/ceil divisions, so pixels on the hull's boundary are in without a tolerance.
    An empty image gives an empty hull (skimage warns).

    Examples
    --------
    >>> m = np.zeros((5, 5), bool); m[0, 0] = m[4, 4] = m[0, 4] = True
    >>> convex_hull_2d(m).sum()
    np.int64(15)
    """
    mask = np.asarray(mask, bool)
    out = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return out
    (r0, r1), (c0, c1) = ((s.start, s.stop) for s in bounding_box(mask))
    v = hull_vertices(mask[r0:r1, c0:c1], r0, c0)
    e = np.roll(v, -1, axis=0) - v
    orient = 1 if int(np.sum(v[:, 0] * np.roll(v[:, 1], -1) - np.roll(v[:, 0], -1) * v[:, 1])) > 0 else -1
    # inside: orient * (e_r * (2c - v_c) - e_c * (2r - v_r)) >= 0 for every edge
    a = orient * e[:, 0]  # coefficient of 2c
    rows = np.arange(r0, r1, dtype=np.int64)[:, None]
    rhs = orient * (e[:, 0] * v[:, 1] + e[:, 1] * (2 * rows - v[:, 0]))  # a * 2c >= rhs
    big = np.iinfo(np.int64).max // 4
    pos, neg = a > 0, a < 0
    lower = np.where(pos, -((-rhs) // np.where(pos, 2 * a, 1)), -big).max(axis=1)
    upper = np.where(neg, rhs // np.where(neg, 2 * a, -1), big).min(axis=1)
    row_ok = np.where(a == 0, rhs <= 0, True).all(axis=1)
    cols = np.arange(c0, c1, dtype=np.int64)[None, :]
    out[r0:r1, c0:c1] = (cols >= lower[:, None]) & (cols <= upper[:, None]) & row_ok[:, None]
    return out


def erode_cross_in_plane(mask: np.ndarray) -> np.ndarray:
    """Erode each (y, x) plane of ``mask`` by the 4-connected cross, border pixels cleared.

    Equals ``ndimage.binary_erosion(mask, structure)`` with the cross as the structure's
    middle plane (``border_value=0``): a pixel stays when it and its 4 in-plane
    neighbours are set. Four slice ANDs instead of scipy's generic erosion (~10x faster).

    Parameters
    ----------
    mask : numpy.ndarray
        bool, shape (..., y, x).

    Returns
    -------
    numpy.ndarray
        bool, same shape.

    Examples
    --------
    >>> m = np.zeros((4, 5), bool); m[:, 1:4] = True
    >>> erode_cross_in_plane(m).astype(int).tolist()
    [[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    """
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros_like(mask)
    if mask.shape[-2] > 2 and mask.shape[-1] > 2:
        c = mask[..., 1:-1, 1:-1]
        out[..., 1:-1, 1:-1] = (c & mask[..., :-2, 1:-1] & mask[..., 2:, 1:-1]
                                & mask[..., 1:-1, :-2] & mask[..., 1:-1, 2:])
    return out


def expand_blocks(coarse: np.ndarray, block: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Each value of a (z, y, x) block grid repeated over its ``block`` voxels, cropped to
    ``shape`` (the inverse of pooling by ``block``; a read-only broadcast view when no
    crop copies it).

    Examples
    --------
    >>> expand_blocks(np.array([[[1, 2]]]), (1, 2, 2), (1, 2, 3)).tolist()
    [[[1, 1, 2], [1, 1, 2]]]
    """
    view = coarse[:, None, :, None, :, None]
    full = np.broadcast_to(
        view, (coarse.shape[0], block[0], coarse.shape[1], block[1], coarse.shape[2], block[2])
    )
    full = full.reshape(tuple(c * b for c, b in zip(coarse.shape, block, strict=True)))
    return full[tuple(slice(0, n) for n in shape)]
