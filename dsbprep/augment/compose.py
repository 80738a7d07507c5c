"""Compose: one recorded draw per sample, spatial transforms resampled once, then intensities."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from ._base import (
    IntensityTransform,
    SpatialTransform,
    Transform,
    as_rng,
    empty_boxes,
)
from .resample import (
    Mapping,
    centred_mapping,
    needed_box,
    permutation_axes,
    resample,
    to_dtype,
    transform_boxes,
)

__all__ = ["Augmented", "Compose"]


class Augmented(NamedTuple):
    """Result of :meth:`Compose.__call__`: arrays, boxes and the recorded parameters."""

    image: np.ndarray
    mask: np.ndarray | None
    boxes: np.ndarray
    params: list[dict[str, Any]]


def _check_pair(image: np.ndarray, mask: np.ndarray | None) -> None:
    if image.ndim not in (2, 3):
        raise ValueError(f"augmentation needs a 2-D or 3-D spatial array, got shape {image.shape}")
    if mask is not None and mask.shape != image.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} must have the same shape")


def _work_array(values: np.ndarray, image: np.ndarray, target) -> np.ndarray:
    """The float32 array the intensity transforms may change in place: ``target[0]`` (a
    batch row) when given, else ``values`` itself unless it shares the input's memory
    (a flip or rot90 view), else a float32 copy. Never the input's values."""
    if target is not None:
        if values is not target[0]:
            target[0][...] = values
        return target[0]
    if values.dtype != np.float32 or np.may_share_memory(values, image):
        return np.array(values, np.float32)
    return values


def cut(a, lo, hi, fill: float, *, shape=None, z0: int = 0) -> np.ndarray:
    """``[lo, hi)`` (z, y, x) of ``a``, the part outside filled with ``fill``.

    ``a`` is an array (a view is returned when the box is inside) or an HDF5 dataset (read);
    ``shape`` (default ``a.shape``) and ``z0`` say where the data lie in it: rows
    ``z0 .. z0 + shape[0]`` (one case of a dsbprep file).
    """
    shape = np.asarray(a.shape if shape is None else shape)
    lo, hi = np.asarray(lo), np.asarray(hi)
    shift = np.zeros(len(shape), np.int64)
    shift[0] = z0

    def box(start, stop):
        return tuple(slice(int(b), int(e)) for b, e in zip(start + shift, stop + shift, strict=True))

    if np.all(lo >= 0) and np.all(hi <= shape):
        return a[box(lo, hi)]
    out = np.full(tuple(int(v) for v in hi - lo), fill, a.dtype)
    src_lo, src_hi = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
    if np.all(src_hi > src_lo):
        dst = tuple(
            slice(int(s - o), int(e - o)) for s, e, o in zip(src_lo, src_hi, lo, strict=True)
        )
        out[dst] = a[box(src_lo, src_hi)]
    return out


class Compose(Transform):
    """Apply transforms with one recorded draw per sample, resampling each patch once.

    The matrices of the spatial transforms are multiplied (in order: the first
    transform acts first) and the patch is interpolated once
    (:mod:`dsbprep.augment.resample`); the intensity transforms then act on the float
    image in their order.

    Parameters
    ----------
    transforms : iterable of SpatialTransform or IntensityTransform

    Examples
    --------
    >>> from dsbprep.augment import Flip
    >>> aug = Compose([Flip(axes=("x",), p=1.0)])
    >>> aug.draw(np.random.default_rng(0))
    [{'name': 'flip', 'axes': ['x']}]
    """

    name = "compose"

    def __init__(self, transforms: Iterable[Transform] = ()) -> None:
        self.transforms = list(transforms)
        for t in self.transforms:
            if not isinstance(t, SpatialTransform | IntensityTransform):
                raise TypeError(
                    "Compose takes SpatialTransform or IntensityTransform objects, got "
                    f"{type(t).__name__}"
                )

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"

    def __len__(self) -> int:
        return len(self.transforms)

    def draw(self, rng: np.random.Generator | int | None) -> list[dict[str, Any]]:
        """Draw every transform's parameters (one dict each, in order)."""
        rng = as_rng(rng)
        return [t.draw(rng) for t in self.transforms]

    def context(self, patch_shape: Sequence[int]) -> np.ndarray:
        """Largest margin any transform declares (informational; see :meth:`plan`)."""
        out = np.zeros(len(patch_shape), int)
        for t in self.transforms:
            out = np.maximum(out, t.context(patch_shape))
        return out

    @property
    def swaps_axes(self) -> bool:
        """True when some transform may swap y and x (needs square in-plane patches)."""
        return any(getattr(t, "swaps_axes", False) for t in self.transforms)

    @property
    def view_only(self) -> bool:
        """True when every transform only flips or permutes axes (no interpolation, no
        intensity change): a patch costs its read and a copy."""
        return all(getattr(t, "view_only", False) for t in self.transforms)

    @property
    def has_intensity(self) -> bool:
        """True when some transform changes image values (the image becomes float)."""
        return any(isinstance(t, IntensityTransform) for t in self.transforms)

    def _checked(self, params: list[dict[str, Any]]) -> None:
        if len(params) != len(self.transforms):
            raise ValueError(
                f"{len(params)} recorded parameter sets for {len(self.transforms)} transforms"
            )
        for t, p in zip(self.transforms, params, strict=True):
            if p.get("name") != t.name:
                raise ValueError(f"recorded parameters {p} do not belong to transform {t.name!r}")

    def matrix(self, params: list[dict[str, Any]], ndim: int) -> np.ndarray:
        """The composed output -> input matrix (z, y, x) of the spatial transforms."""
        out = np.eye(3)
        for t, p in zip(self.transforms, params, strict=True):
            if isinstance(t, SpatialTransform):
                out = out @ t.matrix(p, ndim)
        return out

    def plan(
        self, params: list[dict[str, Any]], patch_shape: Sequence[int], ndim: int
    ) -> tuple[Mapping, np.ndarray, np.ndarray]:
        """The map of a patch about its centre, in the frame of its origin, and the box it reads.

        Returns ``(mapping, lo, hi)``: output voxel ``o`` reads the point
        ``mapping.matrix @ o + mapping.offset`` relative to the patch origin, and every
        point read lies in ``[lo, hi)`` (relative to the origin too).
        """
        self._checked(params)
        shape = tuple(int(s) for s in patch_shape)
        mapping = centred_mapping(self.matrix(params, ndim), shape, (np.asarray(shape) - 1) / 2)
        lo, hi = needed_box(mapping, shape)
        return mapping, lo, hi

    def render(
        self,
        image: np.ndarray,
        mask: np.ndarray | None,
        mapping: Mapping,
        out_shape: Sequence[int],
        params: list[dict[str, Any]],
        dtype: Any,
        out: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Resample (z, y, x) ``image`` and ``mask`` once, then apply the intensity transforms.

        ``mapping`` is relative to ``image``'s index 0. The image comes out as ``dtype``
        (float32 while intensity transforms act; integers rounded and clipped). ``out``:
        arrays the resampling may write into directly (see :func:`resample`).
        """
        intensity = [
            (t, p)
            for t, p in zip(self.transforms, params, strict=True)
            if isinstance(t, IntensityTransform)
        ]
        work = np.float32 if intensity else dtype
        # With intensity transforms, ``out`` is usable only as their float32 work array.
        usable = out is not None and (not intensity or np.dtype(dtype) == np.float32)
        target = out if usable else None
        values, out_mask = resample(image, mask, mapping, tuple(out_shape), work, target)
        if intensity:
            values = _work_array(values, image, target)
            for t, p in intensity:
                values = t.apply_values(values, p)
            values = to_dtype(values, dtype)
        return values, out_mask

    def apply(self, image, mask, boxes, params, *, pad_value: float = 0.0):
        """Apply recorded ``params`` (from :meth:`draw`) deterministically.

        The spatial transforms act about the array's centre; voxels they bring in from
        outside the array get ``pad_value`` (image) and 0 (mask).

        Parameters
        ----------
        image : ndarray, (z, y, x) or (y, x)
        mask : ndarray of the same shape, or None
        boxes : ndarray (n, len(BOX_COLUMNS)) or None
            In the array's voxel frame.
        params : list of dict
            One entry per transform, as returned by :meth:`draw`.
        pad_value : float
            Image value for voxels that come from outside the array.

        Returns
        -------
        image, mask, boxes
            The image keeps its dtype unless an intensity transform is present (then
            float32); flips and quarter turns alone return views of the inputs.

        Raises
        ------
        ValueError
            ``params`` does not match the transforms (count or names).
        """
        image = np.asarray(image)
        _check_pair(image, mask)
        self._checked(params)
        ndim = image.ndim
        image3 = image if ndim == 3 else image[None]
        mask3 = None if mask is None else (mask if ndim == 3 else mask[None])
        matrix = self.matrix(params, ndim)
        source = permutation_axes(matrix)  # quarter turns: the output shape follows the axes
        out_shape = image3.shape if source is None else tuple(image3.shape[i] for i in source)
        mapping = centred_mapping(matrix, out_shape, (np.asarray(image3.shape) - 1) / 2)
        lo, hi = needed_box(mapping, out_shape)
        region = cut(image3, lo, hi, pad_value)
        region_mask = None if mask3 is None else cut(mask3, lo, hi, 0)
        dtype = np.float32 if self.has_intensity else image.dtype
        out, out_mask = self.render(
            region, region_mask, mapping.shifted(lo), out_shape, params, dtype
        )
        boxes = transform_boxes(boxes, mapping)
        if ndim == 2:
            out, out_mask = out[0], None if out_mask is None else out_mask[0]
        return out, out_mask, boxes

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        *,
        rng: np.random.Generator | int | None = None,
        pad_value: float = 0.0,
    ) -> Augmented:
        """Draw parameters with ``rng`` and apply them; the parameters are returned too."""
        params = self.draw(rng)
        image, mask, boxes = self.apply(image, mask, boxes, params, pad_value=pad_value)
        return Augmented(image, mask, empty_boxes() if boxes is None else boxes, params)
