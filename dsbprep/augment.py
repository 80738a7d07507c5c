"""Random spatial augmentation of patches: draw parameters, then apply them deterministically.

Every random transform has two halves (as in TorchIO): ``draw(rng)`` returns a
small JSON-serialisable ``dict`` of parameters, and ``apply(image, mask, boxes,
params)`` is a pure function of its inputs. One draw is applied to the image, the
mask and the boxes together (as MONAI's dictionary transforms do), so they stay
aligned. :class:`Compose` records the parameters of every sample; feeding them
back to :meth:`Compose.apply` replays the sample exactly.

Arrays are spatial only, ``(z, y, x)`` or ``(y, x)`` (no channel axis). Axes are
named ``"z"``, ``"y"``, ``"x"`` and addressed from the end (x is always the last
axis), so one transform serves 3-D patches and 2-D slices; a z flip of a 2-D
slice is a no-op. "In-plane" means the (y, x) plane.

Boxes are ``(n, 8)`` float arrays in the patch's voxel frame with the columns of
:data:`dsbprep.store.BOX_COLUMNS` (z, y, x centre, z, y, x size, diameter, readers).
Centres follow the voxel that moves (index ``i`` -> ``n - 1 - i`` under a flip);
under an arbitrary-angle rotation the sizes become those of the axis-aligned box
around the rotated box.

Examples
--------
>>> import numpy as np
>>> aug = Compose([Flip(axes=("y", "x")), Rot90()])
>>> image = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
>>> mask = (image > 20).astype(np.uint8)
>>> out = aug(image, mask, rng=0)
>>> replayed = aug.apply(image, mask, None, out.params)
>>> bool(np.array_equal(out.image, replayed[0]))
True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

__all__ = [
    "AXES",
    "Augmented",
    "Compose",
    "Flip",
    "Rot90",
    "Rotate",
    "Transform",
    "from_config",
]

logger = logging.getLogger(__name__)

#: Axis name -> axis counted from the end of a spatial array (x is always last).
AXES = {"z": -3, "y": -2, "x": -1}
#: Number of leading box columns that are centres (z, y, x); sizes follow them.
_CENTRE_COLUMNS = 3
#: Default probability that each allowed axis is flipped.
DEFAULT_FLIP_PROBABILITY = 0.5
#: Default largest arbitrary in-plane rotation (degrees): "small" rotations, as in
#: common lung-nodule detector training; beyond ~15 degrees the corners need much context.
DEFAULT_MAX_DEGREES = 10.0
#: Default probability of applying the arbitrary-angle rotation at all.
DEFAULT_ROTATE_PROBABILITY = 0.5
#: Interpolation orders: linear for images, nearest for label masks (labels never blend).
IMAGE_ORDER = 1
MASK_ORDER = 0


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _axis_index(name: str) -> int:
    try:
        return AXES[name]
    except KeyError:
        raise ValueError(f"unknown axis {name!r}; expected one of {tuple(AXES)}") from None


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 8), np.float32)


def _check_pair(image: np.ndarray, mask: np.ndarray | None) -> None:
    if image.ndim not in (2, 3):
        raise ValueError(f"augmentation needs a 2-D or 3-D spatial array, got shape {image.shape}")
    if mask is not None and mask.shape != image.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} must have the same shape")


class Transform:
    """Base class: ``draw(rng) -> params`` and a deterministic ``apply``."""

    name = "transform"

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, image, mask, boxes, params, *, pad_value: float = 0.0):  # pragma: no cover
        raise NotImplementedError

    def context(self, patch_shape: Sequence[int]) -> np.ndarray:
        """Extra voxels per side this transform needs around a patch (default none)."""
        return np.zeros(len(patch_shape), int)


@dataclass(frozen=True)
class Flip(Transform):
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", tuple(self.axes))
        for axis in self.axes:
            _axis_index(axis)
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {self.p}")

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """Return ``{"name": "flip", "axes": [...]}``, the axes to flip."""
        hits = rng.random(len(self.axes)) < self.p
        return {
            "name": self.name,
            "axes": [a for a, hit in zip(self.axes, hits, strict=True) if hit],
        }

    def apply(self, image, mask, boxes, params, *, pad_value: float = 0.0):
        """Flip ``image``, ``mask`` and ``boxes`` along ``params["axes"]`` (returns views)."""
        axes = [_axis_index(a) for a in params["axes"] if -_axis_index(a) <= image.ndim]
        if not axes:
            return image, mask, boxes
        image = np.flip(image, axes)
        mask = None if mask is None else np.flip(mask, axes)
        if boxes is not None and len(boxes):
            boxes = np.array(boxes, np.float32, copy=True)
            for axis in axes:
                col = _CENTRE_COLUMNS + axis
                boxes[:, col] = image.shape[axis] - 1 - boxes[:, col]
        return image, mask, boxes


@dataclass(frozen=True)
class Rot90(Transform):
    """Rotate in-plane (y, x) by ``k`` quarter turns, ``k`` uniform in 0..3.

    An odd ``k`` swaps y and x, so patches must be square in-plane for a batch to
    keep one shape (:class:`dsbprep.loader.BatchLoader` checks this).
    """

    name = "rot90"

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """Return ``{"name": "rot90", "k": k}``."""
        return {"name": self.name, "k": int(rng.integers(0, 4))}

    def apply(self, image, mask, boxes, params, *, pad_value: float = 0.0):
        """Rotate by ``params["k"]`` quarter turns as ``np.rot90(a, k, axes=(-2, -1))``."""
        k = int(params["k"]) % 4
        if k == 0:
            return image, mask, boxes
        ny, nx = image.shape[-2:]
        image = np.rot90(image, k, axes=(-2, -1))
        mask = None if mask is None else np.rot90(mask, k, axes=(-2, -1))
        if boxes is not None and len(boxes):
            boxes = np.array(boxes, np.float32, copy=True)
            y, x = boxes[:, 1].copy(), boxes[:, 2].copy()
            # np.rot90 with k=1 maps input (y, x) to output (nx - 1 - x, y).
            if k == 1:
                boxes[:, 1], boxes[:, 2] = nx - 1 - x, y
            elif k == 2:
                boxes[:, 1], boxes[:, 2] = ny - 1 - y, nx - 1 - x
            else:
                boxes[:, 1], boxes[:, 2] = x, ny - 1 - y
            if k % 2:
                boxes[:, [4, 5]] = boxes[:, [5, 4]]
        return image, mask, boxes


@dataclass(frozen=True)
class Rotate(Transform):
    """Small arbitrary-angle in-plane rotation about the patch centre.

    With probability ``p`` the angle is uniform in ``[-max_degrees, max_degrees]``,
    else 0. Images are interpolated linearly (order 1), masks with nearest neighbour
    (order 0); voxels coming from outside the array get ``pad_value`` (image) and 0
    (mask). The loader reads :meth:`context` extra voxels around each patch and crops
    after rotating, so patch corners hold real data instead of padding.

    Parameters
    ----------
    max_degrees : float
        Largest absolute angle (degrees, at most 45).
    p : float
        Probability of rotating at all.
    """

    max_degrees: float = DEFAULT_MAX_DEGREES
    p: float = DEFAULT_ROTATE_PROBABILITY
    name = "rotate"

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_degrees <= 45.0:
            raise ValueError(f"max_degrees must be in [0, 45], got {self.max_degrees}")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"rotation probability must be in [0, 1], got {self.p}")

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """Return ``{"name": "rotate", "degrees": angle}`` (0.0 when not applied)."""
        hit = rng.random() < self.p
        angle = rng.uniform(-self.max_degrees, self.max_degrees)
        return {"name": self.name, "degrees": float(angle) if hit else 0.0}

    def context(self, patch_shape: Sequence[int]) -> np.ndarray:
        """In-plane margin (same for y and x) that covers the patch at any allowed angle."""
        out = np.zeros(len(patch_shape), int)
        if self.max_degrees == 0 or self.p == 0:
            return out
        theta = math.radians(self.max_degrees)
        half = max(patch_shape[-2:]) / 2
        # Half-width of the square that contains the patch rotated by theta, plus one
        # voxel for the linear interpolation's neighbour.
        need = math.ceil(half * (math.cos(theta) + math.sin(theta)) - half) + 1
        out[-2:] = need
        return out

    def apply(self, image, mask, boxes, params, *, pad_value: float = 0.0):
        """Rotate by ``params["degrees"]`` (counter-clockwise seen with y down, x right)."""
        angle = float(params["degrees"])
        if angle == 0.0:
            return image, mask, boxes
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        # Output point q = R (p - centre) + centre for input point p, in (y, x).
        rot = np.array([[c, -s], [s, c]])
        ndim = image.ndim
        matrix = np.eye(ndim)
        matrix[-2:, -2:] = rot.T  # affine_transform maps output -> input: R^-1 = R^T
        centre = (np.array(image.shape, float) - 1) / 2
        offset = centre - matrix @ centre
        image = ndimage.affine_transform(
            image,
            matrix,
            offset=offset,
            order=IMAGE_ORDER,
            mode="constant",
            cval=pad_value,
            output=image.dtype,
        )
        if mask is not None:
            mask = ndimage.affine_transform(
                mask,
                matrix,
                offset=offset,
                order=MASK_ORDER,
                mode="constant",
                cval=0,
                output=mask.dtype,
            )
        if boxes is not None and len(boxes):
            boxes = np.array(boxes, np.float32, copy=True)
            yx = boxes[:, 1:3] - centre[-2:]
            boxes[:, 1:3] = yx @ rot.T + centre[-2:]
            sizes = boxes[:, 4:6].copy()
            boxes[:, 4:6] = sizes @ np.abs(rot).T
        return image, mask, boxes


class Augmented(NamedTuple):
    """Result of :meth:`Compose.__call__`: arrays, boxes and the recorded parameters."""

    image: np.ndarray
    mask: np.ndarray | None
    boxes: np.ndarray
    params: list[dict[str, Any]]


class Compose(Transform):
    """Apply transforms in order with one recorded draw per sample.

    Parameters
    ----------
    transforms : iterable of Transform
        Applied in this order.

    Examples
    --------
    >>> aug = Compose([Flip(axes=("x",), p=1.0)])
    >>> aug.draw(np.random.default_rng(0))
    [{'name': 'flip', 'axes': ['x']}]
    """

    name = "compose"

    def __init__(self, transforms: Iterable[Transform] = ()) -> None:
        self.transforms = list(transforms)
        for t in self.transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"Compose takes Transform objects, got {type(t).__name__}")

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"

    def __len__(self) -> int:
        return len(self.transforms)

    def draw(self, rng: np.random.Generator | int | None) -> list[dict[str, Any]]:
        """Draw every transform's parameters (one dict each, in order)."""
        rng = _as_rng(rng)
        return [t.draw(rng) for t in self.transforms]

    def context(self, patch_shape: Sequence[int]) -> np.ndarray:
        """Largest extra margin any transform needs around a patch of ``patch_shape``."""
        out = np.zeros(len(patch_shape), int)
        for t in self.transforms:
            out = np.maximum(out, t.context(patch_shape))
        return out

    @property
    def swaps_axes(self) -> bool:
        """True when some transform may swap y and x (needs square in-plane patches)."""
        return any(isinstance(t, Rot90) for t in self.transforms)

    def apply(self, image, mask, boxes, params, *, pad_value: float = 0.0):
        """Apply recorded ``params`` (from :meth:`draw`) deterministically.

        Parameters
        ----------
        image : ndarray, (z, y, x) or (y, x)
        mask : ndarray of the same shape, or None
        boxes : ndarray (n, 8) or None
            In the array's voxel frame.
        params : list of dict
            One entry per transform, as returned by :meth:`draw`.
        pad_value : float
            Image value for voxels that come from outside the array.

        Returns
        -------
        image, mask, boxes
            Possibly non-contiguous views of the inputs.

        Raises
        ------
        ValueError
            ``params`` does not match the transforms (count or names).
        """
        image = np.asarray(image)
        _check_pair(image, mask)
        if len(params) != len(self.transforms):
            raise ValueError(
                f"{len(params)} recorded parameter sets for {len(self.transforms)} transforms"
            )
        for t, p in zip(self.transforms, params, strict=True):
            if p.get("name") != t.name:
                raise ValueError(f"recorded parameters {p} do not belong to transform {t.name!r}")
            image, mask, boxes = t.apply(image, mask, boxes, p, pad_value=pad_value)
        return image, mask, boxes

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
        return Augmented(image, mask, _empty_boxes() if boxes is None else boxes, params)


def _names(value: Any) -> tuple[str, ...]:
    if value in (None, "", False):
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v).strip() for v in value)


def from_config(params: Mapping[str, Any]) -> Compose:
    """Build the augmentation of ``config.ini`` ``[augmentation]`` (parsed values).

    Keys: ``flip_axes`` (names, empty = no flips), ``flip_probability``, ``rot90``
    (bool), ``rotate_max_degrees`` (0 = off), ``rotate_probability``.

    Examples
    --------
    >>> from_config({"flip_axes": ("y", "x"), "flip_probability": 0.5, "rot90": True,
    ...              "rotate_max_degrees": 0, "rotate_probability": 0.5})
    Compose([Flip(axes=('y', 'x'), p=0.5), Rot90()])
    """
    transforms: list[Transform] = []
    axes = _names(params.get("flip_axes", ()))
    if axes:
        transforms.append(
            Flip(axes=axes, p=float(params.get("flip_probability", DEFAULT_FLIP_PROBABILITY)))
        )
    if params.get("rot90", False):
        transforms.append(Rot90())
    degrees = float(params.get("rotate_max_degrees", 0) or 0)
    if degrees > 0:
        transforms.append(
            Rotate(
                max_degrees=degrees,
                p=float(params.get("rotate_probability", DEFAULT_ROTATE_PROBABILITY)),
            )
        )
    return Compose(transforms)
