"""Spatial transforms: flips, quarter turns, rotations and scaling as matrices.

Each transform draws its parameters and turns them into a 3 x 3 matrix that maps
output offsets from the patch centre to input offsets ((z, y, x), see
:class:`~dsbprep.augment._base.SpatialTransform`). :class:`~dsbprep.augment.Compose`
multiplies the matrices of a draw and resamples each patch once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._base import SpatialTransform, axis_index, check_probability, check_range

__all__ = ["Flip", "Rot90", "Rotate", "Scale"]

#: Default probability that each allowed axis is flipped.
DEFAULT_FLIP_PROBABILITY = 0.5
#: Default largest arbitrary in-plane rotation (degrees): "small" rotations, as in
#: common lung-nodule detector training.
DEFAULT_MAX_DEGREES = 10.0
#: Default probability of applying the arbitrary-angle rotation at all.
DEFAULT_ROTATE_PROBABILITY = 0.5
#: Largest rotation angle accepted (degrees): a full half turn either way.
MAX_DEGREES = 180.0
#: Default zoom (magnification) range and probability: nnU-Net's scaling range
#: (batchgeneratorsv2 SpatialTransform ``scaling=(0.7, 1.4)``, ``p_scaling=0.2``).
DEFAULT_ZOOM = (0.7, 1.4)
DEFAULT_SCALE_PROBABILITY = 0.2
#: Quarter turn in the (y, x) plane as an output -> input map (``np.rot90`` with k = 1).
_QUARTER = np.array([[0.0, 1.0], [-1.0, 0.0]])


def _plane_rotation(degrees: float) -> np.ndarray:
    """2 x 2 output -> input map of a rotation by ``degrees`` (90 = one ``np.rot90``)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, s], [-s, c]])


def _embed(block: np.ndarray, axes: tuple[int, int]) -> np.ndarray:
    out = np.eye(3)
    out[np.ix_(axes, axes)] = block
    return out


#: The four quarter turns as 3 x 3 maps (index k).
_QUARTER_TURNS = tuple(_embed(np.linalg.matrix_power(_QUARTER, k), (1, 2)) for k in range(4))


@dataclass(frozen=True)
class Flip(SpatialTransform):
    """Flip each axis of ``axes`` independently with probability ``p``.

    Parameters
    ----------
    axes : sequence of {"z", "y", "x"}
        Axes that may be flipped (a z flip of a 2-D slice is a no-op).
    p : float
        Probability of flipping each axis.
    """

    axes: tuple[str, ...] = ("z", "y", "x")
    p: float = DEFAULT_FLIP_PROBABILITY
    name = "flip"
    view_only = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", tuple(self.axes))
        for axis in self.axes:
            axis_index(axis)
        check_probability(self.p, "flip")

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """Return ``{"name": "flip", "axes": [...]}``, the axes to flip."""
        hits = rng.random(len(self.axes)) < self.p
        return {
            "name": self.name,
            "axes": [a for a, hit in zip(self.axes, hits, strict=True) if hit],
        }

    def matrix(self, params: dict[str, Any], ndim: int) -> np.ndarray:
        """Diagonal of -1 on the flipped axes (index ``i`` -> ``n - 1 - i``)."""
        diagonal = np.ones(3)
        for name in params["axes"]:
            axis = axis_index(name)
            if -axis <= ndim:
                diagonal[3 + axis] = -1.0
        return np.diag(diagonal)


@dataclass(frozen=True)
class Rot90(SpatialTransform):
    """Rotate in-plane (y, x) by ``k`` quarter turns, ``k`` uniform in 0..3.

    An odd ``k`` swaps y and x, so patches must be square in-plane for a batch to
    keep one shape (:class:`dsbprep.loader.BatchLoader` checks this).
    """

    name = "rot90"
    view_only = True
    swaps_axes = True

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """Return ``{"name": "rot90", "k": k}``."""
        return {"name": self.name, "k": int(rng.integers(0, 4))}

    def matrix(self, params: dict[str, Any], ndim: int) -> np.ndarray:
        """``np.rot90(a, k, axes=(-2, -1))`` as a map."""
        return _QUARTER_TURNS[int(params["k"]) % 4]


@dataclass(frozen=True)
class Rotate(SpatialTransform):
    """Arbitrary-angle rotation about the patch centre: in-plane, optionally about y and x.

    With probability ``p`` the in-plane angle is uniform in ``[-max_degrees,
    max_degrees]`` (90 degrees turns like one ``np.rot90``) and, when
    ``max_degrees_3d > 0``, the angles about the x axis (z-y plane) and the y axis
    (z-x plane) are uniform in ``[-max_degrees_3d, max_degrees_3d]`` (ignored for 2-D
    patches); else every angle is 0. Images are interpolated linearly, masks with
    nearest neighbour; the loader reads the region the rotated patch covers, so
    corners hold real data.

    Parameters
    ----------
    max_degrees : float
        Largest absolute in-plane angle (degrees, at most 180).
    p : float
        Probability of rotating at all.
    max_degrees_3d : float
        Largest absolute angle about the x and y axes (0 = in-plane only).
    """

    max_degrees: float = DEFAULT_MAX_DEGREES
    p: float = DEFAULT_ROTATE_PROBABILITY
    max_degrees_3d: float = 0.0
    name = "rotate"

    def __post_init__(self) -> None:
        for value in (self.max_degrees, self.max_degrees_3d):
            if not 0.0 <= value <= MAX_DEGREES:
                raise ValueError(f"max_degrees must be in [0, {MAX_DEGREES}], got {value}")
        check_probability(self.p, "rotation")

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """``{"name": "rotate", "degrees": a}`` (+ ``"degrees_zy"``, ``"degrees_zx"`` in 3-D)."""
        hit = rng.random() < self.p
        angle = rng.uniform(-self.max_degrees, self.max_degrees)
        params: dict[str, Any] = {"name": self.name, "degrees": float(angle) if hit else 0.0}
        if self.max_degrees_3d > 0:
            zy, zx = rng.uniform(-self.max_degrees_3d, self.max_degrees_3d, 2)
            params["degrees_zy"] = float(zy) if hit else 0.0
            params["degrees_zx"] = float(zx) if hit else 0.0
        return params

    def matrix(self, params: dict[str, Any], ndim: int) -> np.ndarray:
        """In-plane rotation, then about x (z-y plane), then about y (z-x plane)."""
        out = _embed(_plane_rotation(float(params["degrees"])), (1, 2))
        if ndim == 3:
            out = out @ _embed(_plane_rotation(float(params.get("degrees_zy", 0.0))), (0, 1))
            out = out @ _embed(_plane_rotation(float(params.get("degrees_zx", 0.0))), (0, 2))
        return out

    def context(self, patch_shape: Sequence[int]) -> np.ndarray:
        """In-plane margin (same for y and x) that covers the patch at the largest in-plane angle.

        Informational: the loader reads exactly the box each draw needs.
        """
        out = np.zeros(len(patch_shape), int)
        if self.max_degrees == 0 or self.p == 0:
            return out
        theta = math.radians(min(self.max_degrees, 45.0))
        half = max(patch_shape[-2:]) / 2
        need = math.ceil(half * (math.cos(theta) + math.sin(theta)) - half) + 1
        out[-2:] = need
        return out


@dataclass(frozen=True)
class Scale(SpatialTransform):
    """Zoom about the patch centre: with probability ``p`` magnify by a factor in ``[low, high]``.

    A factor above 1 enlarges structures (the patch shows less of the case), below 1
    shrinks them; one factor for all axes, or one per axis with ``per_axis`` (2-D
    patches never scale z). Box sizes scale with the factor.

    Parameters
    ----------
    zoom : (float, float)
        Range of the magnification, uniform.
    p : float
        Probability of scaling at all.
    per_axis : bool
        Draw one factor per axis instead of one isotropic factor.
    """

    zoom: tuple[float, float] = DEFAULT_ZOOM
    p: float = DEFAULT_SCALE_PROBABILITY
    per_axis: bool = False
    name = "scale"

    def __post_init__(self) -> None:
        object.__setattr__(self, "zoom", tuple(float(v) for v in self.zoom))
        check_range(self.zoom[0], self.zoom[1], "zoom", minimum=1e-3)
        check_probability(self.p, "scale")

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """``{"name": "scale", "zoom": [z, y, x]}`` (all 1.0 when not applied)."""
        hit = rng.random() < self.p
        factors = rng.uniform(self.zoom[0], self.zoom[1], 3 if self.per_axis else 1)
        zoom = np.broadcast_to(factors, 3) if hit else np.ones(3)
        return {"name": self.name, "zoom": [float(v) for v in zoom]}

    def matrix(self, params: dict[str, Any], ndim: int) -> np.ndarray:
        """``diag(1 / zoom)`` (z left alone for 2-D patches)."""
        zoom = np.asarray(params["zoom"], float)
        if ndim == 2:
            zoom = np.array([1.0, zoom[1], zoom[2]])
        return np.diag(1.0 / zoom)
