"""Compiled interpolation loops (numba), used by :mod:`dsbprep.augment.resample` when present.

Install ``dsbprep[fast]`` (numba) for them; without numba the resampler runs its
vectorised numpy paths, which give the same values (both are tested against
scipy.ndimage) 3-10x slower. Each loop reads the source in its own dtype (uint8,
int16, ...) and writes float32: nothing is converted before it is interpolated.
Coordinates are computed in float64, as scipy does.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "AVAILABLE",
    "GAMMA_TABLE_SIZE",
    "blend_rows",
    "blur_middle",
    "blur_rows",
    "gamma_in_place",
    "plane_rows",
    "resize_middle",
    "trilinear",
]

#: Entries of the power-curve table of :func:`gamma_in_place` (x in [0, 1] in steps of
#: h = 1 / (size - 1)); the first interval, where ``x ** gamma`` (gamma < 1) is steepest,
#: is computed exactly. Linear interpolation elsewhere is off by at most
#: ``gamma |gamma - 1| h ** min(gamma, 2) / 8``: 2.4e-4 for gamma 0.5, 3e-5 in nnU-Net's
#: range 0.7-1.5 (tests/test_intensity.py measures it), at a fraction of a ``pow`` per voxel.
GAMMA_TABLE_SIZE = 16385

try:  # pragma: no cover - depends on the environment
    from numba import njit

    AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the environment
    AVAILABLE = False

    def njit(*args, **kwargs):
        """Stand-in decorator: the plain Python functions are never called without numba."""
        return lambda f: f


@njit(cache=True, nogil=True)
def plane_rows(
    src, rows, base, width, weights, out, mask_src, nearest, mask_out
):  # pragma: no cover
    """``out[r, i] = sum_k src[rows[r], base[i] + (0, 1, width, width + 1)[k]] * weights[i, k]``.

    float32 arithmetic in the order of the numpy path (same values); ``base`` and
    ``nearest`` are int32 and ``weights`` (n, 4) interleaved, so one output voxel reads
    one 16-byte weight record: 2x faster than (4, n) int64 index and weight planes.
    With a non-empty ``mask_out``, also ``mask_out[r, i] = mask_src[rows[r], nearest[i]]``.
    """
    n = base.shape[0]
    with_mask = mask_out.shape[0] > 0
    for r in range(rows.shape[0]):
        s = src[rows[r]]
        o = out[r]
        for i in range(n):
            b = base[i]
            o[i] = (
                np.float32(s[b]) * weights[i, 0]
                + np.float32(s[b + 1]) * weights[i, 1]
                + np.float32(s[b + width]) * weights[i, 2]
                + np.float32(s[b + width + 1]) * weights[i, 3]
            )
        if with_mask:
            ms = mask_src[rows[r]]
            mo = mask_out[r]
            for i in range(n):
                mo[i] = ms[nearest[i]]


@njit(cache=True, nogil=True)
def blend_rows(planes, low, frac, out):  # pragma: no cover
    """``out[r] = a + (b - a) * frac[r]`` with ``a, b = planes[low[r]], planes[low[r] + 1]``."""
    for r in range(low.shape[0]):
        a = planes[low[r]]
        b = planes[low[r] + 1]
        o = out[r]
        f = frac[r]
        for i in range(a.shape[0]):
            o[i] = a[i] + (b[i] - a[i]) * f


@njit(cache=True, nogil=True)
def resize_middle(a, low, high, weight, out):  # pragma: no cover
    """Linear resize of the middle axis of (p, m, q) ``a`` into (p, n, q) ``out``:
    ``out[:, i] = a[:, low[i]] + (a[:, high[i]] - a[:, low[i]]) * weight[i]`` (float32)."""
    for j in range(a.shape[0]):
        for i in range(low.shape[0]):
            lo, hi, w = low[i], high[i], weight[i]
            for k in range(a.shape[2]):
                out[j, i, k] = a[j, lo, k] + (a[j, hi, k] - a[j, lo, k]) * w


@njit(cache=True, nogil=True)
def _low(c, n):  # pragma: no cover - compiled
    i = math.floor(c)
    return min(max(i, 0), max(n - 2, 0))


@njit(cache=True, nogil=True)
def _near(c, n):  # pragma: no cover - compiled
    i = math.floor(c + 0.5)
    return min(max(i, 0), n - 1)


@njit(cache=True, nogil=True)
def trilinear(src, matrix, offset, out, mask_src, mask_out, with_mask):  # pragma: no cover
    """Trilinear image and nearest mask through ``matrix @ o + offset`` for every output voxel."""
    nz, ny, nx = src.shape
    oz, oy, ox = out.shape
    for z in range(oz):
        for y in range(oy):
            bz = matrix[0, 0] * z + matrix[0, 1] * y + offset[0]
            by = matrix[1, 0] * z + matrix[1, 1] * y + offset[1]
            bx = matrix[2, 0] * z + matrix[2, 1] * y + offset[2]
            for x in range(ox):
                cz = bz + matrix[0, 2] * x
                cy = by + matrix[1, 2] * x
                cx = bx + matrix[2, 2] * x
                z0, y0, x0 = _low(cz, nz), _low(cy, ny), _low(cx, nx)
                fz, fy, fx = cz - z0, cy - y0, cx - x0
                a = src[z0, y0, x0] + (src[z0, y0, x0 + 1] - np.float64(src[z0, y0, x0])) * fx
                b = (
                    src[z0, y0 + 1, x0]
                    + (src[z0, y0 + 1, x0 + 1] - np.float64(src[z0, y0 + 1, x0])) * fx
                )
                c = (
                    src[z0 + 1, y0, x0]
                    + (src[z0 + 1, y0, x0 + 1] - np.float64(src[z0 + 1, y0, x0])) * fx
                )
                d = (
                    src[z0 + 1, y0 + 1, x0]
                    + (src[z0 + 1, y0 + 1, x0 + 1] - np.float64(src[z0 + 1, y0 + 1, x0])) * fx
                )
                top = a + (b - a) * fy
                out[z, y, x] = top + (c + (d - c) * fy - top) * fz
                if with_mask:
                    mask_out[z, y, x] = mask_src[_near(cz, nz), _near(cy, ny), _near(cx, nx)]


@njit(cache=True, nogil=True)
def _moments(flat, sign):  # pragma: no cover - compiled
    """min, max, mean and standard deviation of ``sign * flat`` (float64 sums)."""
    low, high, total, squares = np.inf, -np.inf, 0.0, 0.0
    for i in range(flat.shape[0]):
        v = np.float64(flat[i] * sign)
        low = min(low, v)
        high = max(high, v)
        total += v
        squares += v * v
    n = max(flat.shape[0], 1)
    mean = total / n
    return low, high, mean, math.sqrt(max(squares / n - mean * mean, 0.0))


@njit(cache=True, nogil=True)
def gamma_in_place(flat, gamma, sign, tiny):  # pragma: no cover - compiled
    """nnU-Net's gamma on float32 ``flat`` in place: ``v = sign * flat`` rescaled to [0, 1],
    raised to ``gamma`` (table of ``GAMMA_TABLE_SIZE`` entries, linear in between), scaled
    back, its mean and standard deviation restored to those of ``v``, times ``sign``."""
    size = GAMMA_TABLE_SIZE
    table = np.empty(size + 1, np.float32)
    for k in range(size):
        table[k] = (k / (size - 1)) ** gamma
    table[size] = table[size - 1]  # t == size - 1 exactly (the patch maximum)
    low, high, mean, std = _moments(flat, sign)
    span = max(high - low, tiny)
    scale = np.float32((size - 1) / span)
    low32, span32, sign32 = np.float32(low), np.float32(span), np.float32(sign)
    total, squares = 0.0, 0.0
    for i in range(flat.shape[0]):
        t = max((flat[i] * sign32 - low32) * scale, np.float32(0.0))
        k = int(t)
        if k == 0 and t > 0:  # the steep first interval: exact
            y = np.float32((t / (size - 1)) ** gamma) * span32 + low32
        else:
            y = (table[k] + (table[k + 1] - table[k]) * (t - np.float32(k))) * span32 + low32
        flat[i] = y
        total += y
        squares += np.float64(y) * y
    n = max(flat.shape[0], 1)
    mean2 = total / n
    std2 = math.sqrt(max(squares / n - mean2 * mean2, 0.0))
    factor = np.float32(std / max(std2, tiny))
    shift = np.float32(mean - mean2 * factor)
    for i in range(flat.shape[0]):
        flat[i] = (flat[i] * factor + shift) * sign32


@njit(cache=True, nogil=True)
def _reflect(j, n):  # pragma: no cover - compiled
    """scipy.ndimage's ``reflect`` border: d c b a | a b c d | d c b a, any offset."""
    j = j % (2 * n)
    return j if j < n else 2 * n - 1 - j


@njit(cache=True, nogil=True)
def blur_middle(a, weights, out):  # pragma: no cover - compiled
    """Correlate the middle axis of (p, n, q) float32 ``a`` with ``weights`` into ``out``."""
    p, n, q = a.shape
    r = (weights.shape[0] - 1) // 2
    for i in range(p):
        for j in range(n):
            o = out[i, j]
            o[:] = 0.0
            for k in range(-r, r + 1):
                w = np.float32(weights[k + r])
                src = a[i, _reflect(j + k, n)]
                for m in range(q):
                    o[m] += w * src[m]


@njit(cache=True, nogil=True)
def blur_rows(a, weights, out):  # pragma: no cover - compiled
    """Correlate every row of (p, n) float32 ``a`` with ``weights`` into ``out``."""
    p, n = a.shape
    r = (weights.shape[0] - 1) // 2
    row = np.empty(n + 2 * r, np.float32)
    for i in range(p):
        for m in range(n + 2 * r):
            row[m] = a[i, _reflect(m - r, n)]
        o = out[i]
        o[:] = 0.0
        for k in range(2 * r + 1):
            w = np.float32(weights[k])
            for m in range(n):
                o[m] += w * row[m + k]
