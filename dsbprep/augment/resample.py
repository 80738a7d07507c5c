"""One resampling per patch: a composed affine map of the voxel grid, applied once.

A :class:`Mapping` says where each output voxel ``o`` (z, y, x index) takes its value
from: the input point ``matrix @ o + offset`` (scipy's ``affine_transform``
convention). :func:`resample` applies it to an image (linear interpolation) and a
mask (nearest neighbour) with the fastest exact path for its kind:

* a signed permutation with integer offset (flips, rot90): a strided view, no copy;
* z untouched by y and x (in-plane rotation and scaling, z flips, z scaling): one 2-D
  map of indices and bilinear weights computed for the (y, x) plane and shared by
  every slice, the slices gathered with it in the image's own dtype (uint8, int16)
  and weighted straight into the output dtype, then a linear blend along z when z
  is scaled;
* anything else (rotations about y or x): trilinear interpolation computed slab by
  slab, so the working arrays stay in the CPU cache.

The input must contain every voxel the map touches (:func:`needed_box` says which;
the loader reads exactly that box from the file, padded outside the case).

Examples
--------
>>> import numpy as np
>>> image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
>>> flip_x = Mapping(np.diag([1.0, 1.0, -1.0]), np.array([0.0, 0.0, 3.0]))
>>> resample(image, None, flip_x, (1, 4, 4), np.uint8)[0][0, 0].tolist()
[3, 2, 1, 0]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _kernels

__all__ = ["Mapping", "centred_mapping", "needed_box", "resample", "transform_boxes"]

#: Coordinates within this distance of an integer count as integers (float noise of
#: composed matrices, e.g. cos(90 degrees) = 6e-17).
_EPS = 1e-6
#: Output z slices per slab of the general 3-D path: 8 slices of 96 x 96 keep each
#: float32 working array at 0.3 MB (cache-resident on any recent CPU).
_SLAB_VOXELS = 8 * 96 * 96
#: Use the compiled loops of :mod:`dsbprep.augment._kernels` (numba installed). Tests
#: switch it off to check the numpy paths against the same reference.
COMPILED = _kernels.AVAILABLE
#: An empty mask output: the compiled plane loop then skips the mask.
_NO_MASK = np.zeros((0, 0), np.uint8)


@dataclass(frozen=True)
class Mapping:
    """Output voxel ``o`` reads the input point ``matrix @ o + offset`` (z, y, x)."""

    matrix: np.ndarray
    offset: np.ndarray

    def __post_init__(self) -> None:
        # Classified once (small-matrix checks in plain Python: numpy calls on 3 x 3
        # arrays cost more than the checks themselves).
        m = [[float(v) for v in row] for row in np.asarray(self.matrix, float)]
        t = [float(v) for v in np.asarray(self.offset, float)]
        object.__setattr__(self, "matrix", np.asarray(m))
        object.__setattr__(self, "offset", np.asarray(t))
        axes = _permutation(m)
        integral = all(abs(v - round(v)) < _EPS for v in t)
        object.__setattr__(self, "_axes", axes)
        object.__setattr__(self, "_exact", axes is not None and integral)
        inplane = all(abs(v) < _EPS for v in (m[0][1], m[0][2], m[1][0], m[2][0]))
        object.__setattr__(self, "_inplane", inplane)

    def shifted(self, delta: np.ndarray) -> Mapping:
        """The same map for an input whose index 0 sits at ``delta`` of the old one."""
        if not np.any(delta):
            return self
        return Mapping(self.matrix, self.offset - np.asarray(delta, float))

    @property
    def is_permutation(self) -> bool:
        """True for flips and quarter turns with an integer offset (no interpolation)."""
        return self._exact

    @property
    def is_inplane(self) -> bool:
        """True when z neither feeds nor is fed by y and x."""
        return self._inplane


def _permutation(m: list[list[float]]) -> list[int] | None:
    """Input axis of each output axis of a signed permutation matrix, else None."""
    axes = []
    for j in range(len(m[0])):
        rows = [i for i in range(len(m)) if abs(m[i][j]) > _EPS]
        if len(rows) != 1 or abs(abs(m[rows[0]][j]) - 1) > _EPS:
            return None
        axes.append(rows[0])
    return axes if len(set(axes)) == len(axes) else None


def permutation_axes(matrix: np.ndarray) -> list[int] | None:
    """For a signed permutation matrix, the input axis of each output axis; else None."""
    return _permutation([[float(v) for v in row] for row in np.asarray(matrix, float)])


def _integral(values: np.ndarray) -> bool:
    return bool(np.all(np.abs(values - np.round(values)) < _EPS))


def centred_mapping(
    matrix: np.ndarray, out_shape: tuple[int, ...], in_centre: np.ndarray
) -> Mapping:
    """The map that sends the centre of ``out_shape`` to ``in_centre`` (both voxel units)."""
    out_centre = (np.asarray(out_shape, float) - 1) / 2
    matrix = np.asarray(matrix, float)
    return Mapping(matrix, np.asarray(in_centre, float) - matrix @ out_centre)


def _corners(mapping: Mapping, out_shape: tuple[int, ...]) -> np.ndarray:
    grid = np.array(np.meshgrid(*[[0, n - 1] for n in out_shape], indexing="ij"), float)
    return mapping.matrix @ grid.reshape(3, -1) + mapping.offset[:, None]


def needed_box(mapping: Mapping, out_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Start and stop (exclusive) of the input voxels that :func:`resample` reads.

    Linear interpolation reads each point's floor and the voxel after it, so the box
    reaches one voxel past the largest coordinate (and at least 2 voxels per axis).
    """
    if mapping.is_permutation and mapping._axes == [0, 1, 2]:  # is_permutation: integral offset too
        lo = np.round(mapping.offset).astype(np.int64)  # flips about the centre: the same box
        if not lo.any():
            return lo, np.asarray(out_shape, np.int64)
    points = _corners(mapping, out_shape)
    if mapping.is_permutation:
        lo = np.round(points.min(1)).astype(np.int64)
        return lo, np.round(points.max(1)).astype(np.int64) + 1
    lo = np.floor(points.min(1) + _EPS).astype(np.int64)
    hi = np.floor(points.max(1) - _EPS).astype(np.int64) + 2
    return lo, np.maximum(hi, lo + 2)


def transform_boxes(boxes: np.ndarray, mapping: Mapping) -> np.ndarray:
    """Boxes (``BOX_COLUMNS``) from the input frame to the output frame of ``mapping``.

    Centres follow the inverse map; sizes become those of the axis-aligned box around
    the mapped box; the diameters scale with the map's mean magnification.
    """
    if boxes is None or not len(boxes):
        return boxes
    inverse = np.linalg.inv(mapping.matrix)
    out = np.array(boxes, np.float32, copy=True)
    out[:, :3] = (out[:, :3] - mapping.offset) @ inverse.T
    out[:, 3:6] = out[:, 3:6] @ np.abs(inverse).T
    # Diameters (column 6, and 8 = diameter_axial_mm in 9-column boxes) scale with the
    # mean magnification (in-plane for maps that keep z apart, as 2-D patches do).
    if mapping.is_inplane:
        gain = abs(np.linalg.det(inverse[1:, 1:])) ** 0.5
    else:
        gain = abs(np.linalg.det(inverse)) ** (1 / 3)
    out[:, 6::2][:, : 2 if out.shape[1] > 8 else 1] *= gain
    return out


def to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float values as ``dtype`` (integers rounded half to even and clipped to the range)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(dtype, copy=False)


def resample(
    image: np.ndarray,
    mask: np.ndarray | None,
    mapping: Mapping,
    out_shape: tuple[int, ...],
    dtype: Any,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Image (linear) and mask (nearest) through ``mapping``, on an (z, y, x) grid.

    Parameters
    ----------
    image, mask : ndarray (z, y, x)
        The input box; ``mask`` may be None. It must hold :func:`needed_box`.
    mapping : Mapping
    out_shape : tuple of 3 int
    dtype : numpy dtype
        Output image dtype; integers are rounded (half to even) and clipped.
    out : (ndarray, ndarray), optional
        C-contiguous image and mask arrays of ``out_shape`` to write into (e.g. a batch's
        memory); the in-plane path fills them directly, other paths may ignore them.

    Returns
    -------
    image, mask
        Views of the inputs for pure permutations, else new arrays (or ``out``).
    """
    out_shape = tuple(int(n) for n in out_shape)
    if mapping.is_permutation:
        image = _permuted(image, mapping, out_shape)
        mask = None if mask is None else _permuted(mask, mapping, out_shape)
        return image, mask
    image = np.ascontiguousarray(image)
    mask = None if mask is None else np.ascontiguousarray(mask)
    if mapping.is_inplane:
        usable = out is not None and mask is not None and out[0].flags.c_contiguous
        usable = usable and out[1].flags.c_contiguous and out[1].dtype == mask.dtype
        return _inplane(image, mask, mapping, out_shape, np.dtype(dtype), out if usable else None)
    return _general(image, mask, mapping, out_shape, np.dtype(dtype))


def _permuted(a: np.ndarray, mapping: Mapping, out_shape: tuple[int, ...]) -> np.ndarray:
    """``a`` seen through a signed permutation: transpose, then strided slices."""
    m = np.round(mapping.matrix).astype(int)
    offset = np.round(mapping.offset).astype(int)
    source = mapping._axes
    view = a.transpose(source)
    slices = []
    for j, i in enumerate(source):
        step, start = int(m[i, j]), int(offset[i])
        stop = start + step * out_shape[j]
        slices.append(slice(start, None if stop < 0 else stop, step))
    return view[tuple(slices)]


def _plane_grid(out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.meshgrid(np.arange(out_hw[0]), np.arange(out_hw[1]), indexing="ij")
    return yy.ravel().astype(float), xx.ravel().astype(float)


def _floor_and_frac(coord: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower neighbour (clipped to [0, n - 2]) and the weight of the upper one."""
    low = np.clip(np.floor(coord), 0, max(n - 2, 0)).astype(np.intp)
    return low, (coord - low).astype(np.float32)


def _nearest(coord: np.ndarray, n: int) -> np.ndarray:
    return np.clip(np.floor(coord + 0.5), 0, n - 1).astype(np.intp)


def _plane_map(mapping: Mapping, out_hw, in_hw):
    """The bilinear (y, x) map: int32 flat index of each point's lower neighbour (HW),
    float32 weights (HW, 4) of its neighbours ``base + (0, 1, width, width + 1)``
    (interleaved: the compiled loop reads one 16-byte record per voxel), and the int32
    nearest index (HW)."""
    yy, xx = _plane_grid(out_hw)
    m, t = mapping.matrix, mapping.offset
    cy = m[1, 1] * yy + m[1, 2] * xx + t[1]
    cx = m[2, 1] * yy + m[2, 2] * xx + t[2]
    y0, fy = _floor_and_frac(cy, in_hw[0])
    x0, fx = _floor_and_frac(cx, in_hw[1])
    base = (y0 * in_hw[1] + x0).astype(np.int32)
    gy, gx = 1 - fy, 1 - fx
    weights = np.stack([gy * gx, gy * fx, fy * gx, fy * fx], axis=1).astype(np.float32)
    nearest = (_nearest(cy, in_hw[0]) * in_hw[1] + _nearest(cx, in_hw[1])).astype(np.int32)
    return base, weights, nearest


def _as_slice(rows: np.ndarray) -> slice | np.ndarray:
    """Consecutive rows (step +1 or -1) as a slice, so selecting them makes no copy."""
    if len(rows) > 1 and abs(int(rows[1]) - int(rows[0])) == 1:
        step = int(rows[1]) - int(rows[0])
        if np.all(np.diff(rows) == step):
            stop = int(rows[-1]) + step
            return slice(int(rows[0]), None if stop < 0 else stop, step)
    return rows


def _bilinear_rows(flat, rows, plane, out=None, mask=None) -> np.ndarray:
    """float32 (len(rows), HW): every row gathered with one shared bilinear map.

    ``plane`` = (base, width, weights) of :func:`_plane_map` and the input's row width;
    ``mask`` = (flat mask, nearest indices, output rows) gathers the mask rows too.
    """
    base, width, weights = plane
    if COMPILED:
        rows = np.arange(flat.shape[0])[rows] if isinstance(rows, slice) else rows
        if out is None:
            out = np.empty((len(rows), base.shape[0]), np.float32)
        flat_mask, nearest, mask_out = mask if mask is not None else (flat, base, _NO_MASK)
        rows = np.asarray(rows, np.intp)
        _kernels.plane_rows(flat, rows, base, width, weights, out, flat_mask, nearest, mask_out)
        return out
    source = flat[rows]
    index = base[None, :] + np.array([0, 1, width, width + 1], np.intp)[:, None]
    gathered = source[:, index.ravel()].reshape(len(source), 4, -1)  # one fancy gather
    values = np.multiply(gathered[:, 0], weights[:, 0], dtype=np.float32)
    for k in range(1, 4):
        values += np.multiply(gathered[:, k], weights[:, k], dtype=np.float32)
    if mask is not None:
        mask[2][...] = mask[0][rows][:, mask[1]]
    if out is not None:
        out[...] = values
        return out
    return values


def _inplane(image, mask, mapping, out_shape, dtype, out=None):
    """Maps whose z part is separate: one shared 2-D map, then a z blend if z scales."""
    nz, ny, nx = image.shape
    base, weights, nearest = _plane_map(mapping, out_shape[1:], (ny, nx))
    plane = (base, nx, weights)
    flat = image.reshape(nz, ny * nx)
    flat_mask = None if mask is None else mask.reshape(nz, ny * nx)
    n_out = (out_shape[0], base.shape[0])
    direct = out is not None and out[0].dtype == np.float32 and np.dtype(dtype) == np.float32
    if out is None:
        out = (None, None if mask is None else np.empty(out_shape, mask.dtype))
    cz = mapping.matrix[0, 0] * np.arange(out_shape[0]) + mapping.offset[0]
    if _integral(cz):
        rows = np.clip(np.round(cz), 0, nz - 1).astype(np.intp)
        target = out[0].reshape(n_out) if direct else None
        fused = None if mask is None else (flat_mask, nearest, out[1].reshape(n_out))
        values = _bilinear_rows(flat, _as_slice(rows), plane, target, fused)
        filled = target is not None
    else:
        z0, fz = _floor_and_frac(cz, nz)
        used = np.arange(z0.min(), z0.max() + 2)
        planes = _bilinear_rows(flat, used, plane)
        target = out[0].reshape(n_out) if direct else np.empty(n_out, np.float32)
        values = _z_blend(planes, z0 - used[0], fz, target)
        filled = direct
        if mask is not None:
            near_rows = _nearest(cz, nz)
            out[1].reshape(n_out)[...] = flat_mask[_as_slice(near_rows)][:, nearest]
    image_out = out[0] if direct else to_dtype(values, dtype).reshape(out_shape)
    if direct and not filled:
        out[0].reshape(n_out)[...] = values
    return image_out, out[1]


def _z_blend(planes: np.ndarray, low: np.ndarray, frac: np.ndarray, out: np.ndarray):
    """``out[r] = planes[low[r]] + (planes[low[r] + 1] - planes[low[r]]) * frac[r]`` (float32)."""
    if COMPILED:
        _kernels.blend_rows(planes, low.astype(np.intp), frac, out)
        return out
    lower, upper = planes[low], planes[low + 1]
    np.multiply(upper - lower, frac[:, None], out=out)
    out += lower
    return out


def _general(image, mask, mapping, out_shape, dtype):
    """Trilinear interpolation for any affine map (compiled loop, else slab by slab)."""
    if COMPILED:
        values = np.empty(out_shape, np.float32)
        with_mask = mask is not None
        out_mask = np.empty(out_shape, mask.dtype) if with_mask else np.empty((1, 1, 1), np.uint8)
        source_mask = mask if with_mask else out_mask
        matrix, offset = np.asarray(mapping.matrix, float), np.asarray(mapping.offset, float)
        _kernels.trilinear(image, matrix, offset, values, source_mask, out_mask, with_mask)
        return to_dtype(values, dtype), out_mask if with_mask else None
    shape = image.shape
    strides = np.array([shape[1] * shape[2], shape[2], 1], np.intp)
    yy, xx = _plane_grid(out_shape[1:])
    m, t = mapping.matrix, mapping.offset
    plane = [(m[k, 1] * yy + m[k, 2] * xx + t[k]).astype(np.float32) for k in range(3)]
    flat = image.ravel()
    flat_mask = None if mask is None else mask.ravel()
    values = np.empty((out_shape[0], yy.size), np.float32)
    out_mask = None if mask is None else np.empty((out_shape[0], yy.size), mask.dtype)
    step = max(1, _SLAB_VOXELS // max(yy.size, 1))
    for z_start in range(0, out_shape[0], step):
        zs = np.arange(z_start, min(z_start + step, out_shape[0]), dtype=np.float32)
        coords = [plane[k][None, :] + np.float32(m[k, 0]) * zs[:, None] for k in range(3)]
        pairs = [_floor_and_frac(c, n) for c, n in zip(coords, shape, strict=True)]
        lows, fracs = [p[0] for p in pairs], [p[1] for p in pairs]
        base = lows[0] * strides[0] + lows[1] * strides[1] + lows[2]
        values[z_start : z_start + len(zs)] = _trilinear(flat, base, fracs, strides)
        if out_mask is not None:
            near = [_nearest(c, n) for c, n in zip(coords, shape, strict=True)]
            index = near[0] * strides[0] + near[1] * strides[1] + near[2]
            out_mask[z_start : z_start + len(zs)] = np.take(flat_mask, index)
    out = to_dtype(values, dtype).reshape(out_shape)
    return out, None if out_mask is None else out_mask.reshape(out_shape)


def _trilinear(flat: np.ndarray, base: np.ndarray, fracs, strides: np.ndarray) -> np.ndarray:
    """Blend the 8 neighbours of every point: along x, then y, then z (float32)."""
    fz, fy, fx = fracs

    def lerp_x(offset: int) -> np.ndarray:
        low = np.take(flat, base + offset).astype(np.float32)
        high = np.take(flat, base + offset + 1)
        return low + (high - low) * fx

    def lerp_y(offset: int) -> np.ndarray:
        low = lerp_x(offset)
        return low + (lerp_x(offset + strides[1]) - low) * fy

    low = lerp_y(0)
    return low + (lerp_y(strides[0]) - low) * fz
