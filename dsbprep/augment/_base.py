"""Base classes and helpers shared by the spatial and intensity transforms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..store.format import empty_boxes  # noqa: F401  (re-exported for the augment modules)

__all__ = ["AXES", "IntensityTransform", "SpatialTransform", "Transform"]

#: Axis name -> axis counted from the end of a spatial array (x is always last).
AXES = {"z": -3, "y": -2, "x": -1}
#: Number of leading box columns that are centres (z, y, x); sizes follow them.
CENTRE_COLUMNS = 3


def as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """``rng`` itself if it is a Generator, else ``np.random.default_rng(rng)``."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def axis_index(name: str) -> int:
    """The negative axis of ``name`` ("z" -> -3), or ValueError."""
    try:
        return AXES[name]
    except KeyError:
        raise ValueError(f"unknown axis {name!r}; expected one of {tuple(AXES)}") from None


def check_probability(value: float, what: str) -> None:
    """ValueError unless ``0 <= value <= 1``."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} probability must be in [0, 1], got {value}")


def check_range(low: float, high: float, what: str, *, minimum: float = 0.0) -> None:
    """ValueError unless ``minimum <= low <= high``."""
    if not minimum <= low <= high:
        raise ValueError(f"{what} range must satisfy {minimum} <= low <= high, got ({low}, {high})")


class Transform:
    """Base class: ``draw(rng) -> params`` (a JSON-able dict) and a deterministic ``apply``.

    ``apply(image, mask, boxes, params, pad_value=...)`` is :meth:`Compose.apply` of this
    one transform; subclasses are either :class:`SpatialTransform` (a linear map of the
    voxel grid about the patch centre) or :class:`IntensityTransform` (image values only).
    """

    name = "transform"

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, image, mask, boxes, params, *, pad_value: float = 0.0):
        """Apply recorded ``params`` of this transform alone (see :meth:`Compose.apply`)."""
        from .compose import Compose

        return Compose([self]).apply(image, mask, boxes, [params], pad_value=pad_value)

    def context(self, patch_shape: Sequence[int]) -> np.ndarray:
        """Extra voxels per side this transform may read around a patch (default none)."""
        return np.zeros(len(patch_shape), int)


class SpatialTransform(Transform):
    """A transform of the voxel grid: ``matrix(params, ndim)`` maps output to input.

    The 3 x 3 matrix acts on (z, y, x) offsets from the patch centre: the output voxel
    at offset ``o`` takes its value from the input point ``matrix @ o``. ``ndim`` is the
    patch's dimensionality (2 for slices: the z row and column must stay identity).
    Compose multiplies the matrices of all spatial transforms and resamples once.
    ``view_only`` is True for transforms whose matrices only flip or permute axes (the
    patch stays a strided view of the box read: nothing is interpolated).
    """

    view_only = False

    def matrix(self, params: dict[str, Any], ndim: int) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    #: True when the transform may swap y and x (patches must be square in-plane).
    swaps_axes = False


class IntensityTransform(Transform):
    """A transform of image values only (float32, after every spatial transform).

    ``apply_values(image, params)`` returns the new float32 image; the mask and boxes
    are untouched.
    """

    def apply_values(self, image: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover - abstract


def split_at_one(rng: np.random.Generator, low: float, high: float) -> float:
    """A factor from ``[low, high]`` drawn as nnU-Net's ``BGContrast`` draws it.

    With probability 0.5 (when ``low < 1``) uniform in ``[low, 1]``, else uniform in
    ``[max(low, 1), high]``: factors below and above 1 are equally likely however
    asymmetric the range (batchgeneratorsv2 ``transforms/intensity/contrast.py``).
    Two draws from ``rng`` always, so streams do not depend on the outcome.
    """
    below = rng.random() < 0.5 and low < 1.0
    u = rng.random()
    lo, hi = (low, 1.0) if below else (max(low, 1.0), high)
    return float(lo + (hi - lo) * u)
