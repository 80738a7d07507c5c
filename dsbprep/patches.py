"""Where to cut patches: samplers that return a patch origin for one case.

A sampler answers one question: given a case (its shape, nodule boxes and stored
foreground points, :class:`CaseInfo`), a patch size and a random generator, where
does the patch start? The origin is the (z, y, x) voxel of the patch's first
corner in the case's frame; it may lie partly outside the case (the loader pads
with the file's pad value and mask 0). Samplers never read image data.

* :class:`UniformSampler` - anywhere, uniformly (inside the case where it fits);
* :class:`LabelSampler` - centred on a voxel of a mask label (the lungs, or any
  label), drawn from the foreground points the file stores per case
  (``meta["foreground"]``), so no mask is read;
* :class:`BoxSampler` - around a nodule box with probability ``positive_fraction``,
  else uniform (the DSB2017 detector's training crops);
* :class:`SliceSampler` - a whole axial slice (2-D files: the case itself).

Examples
--------
>>> import numpy as np
>>> case = CaseInfo(shape=(100, 200, 200))
>>> UniformSampler().origin(case, (96, 96, 96), np.random.default_rng(0)).tolist()
[4, 66, 53]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .store.format import as_boxes, empty_boxes

__all__ = [
    "BoxSampler",
    "CaseInfo",
    "LabelSampler",
    "Sampler",
    "SliceSampler",
    "UniformSampler",
    "SAMPLERS",
    "make_sampler",
    "sample_origins",
]

logger = logging.getLogger(__name__)

#: Fraction of patches centred on a nodule in the DSB2017 detector's training
#: (grt123 config ``r_rand_crop = 0.3``: 30 % random crops, 70 % around nodules).
DEFAULT_POSITIVE_FRACTION = 0.7
#: Fraction of the free space around a box (patch minus box) over which a positive
#: patch's centre is jittered: 1 keeps the whole box inside the patch when it fits.
DEFAULT_JITTER = 1.0
#: Foreground points are stored as int16: coordinates of a stored case stay far below 32768.
_POINT_DTYPE = np.int16


@dataclass
class CaseInfo:
    """What a sampler may know about a case (no image data).

    Parameters
    ----------
    shape : tuple of 3 int
        Case shape (z, y, x); 2-D cases are (1, y, x).
    boxes : ndarray, (n, len(BOX_COLUMNS))
        Boxes in the case's voxel frame (``BOX_COLUMNS``).
    foreground : dict
        Mask label (int) -> (m, 3) voxel indices of that label (a sample of them).
    """

    shape: tuple[int, int, int]
    boxes: np.ndarray = field(default_factory=empty_boxes)
    foreground: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_meta(
        cls,
        shape: Sequence[int],
        boxes: np.ndarray | None,
        meta_foreground: Mapping[str, Any] | None,
    ) -> CaseInfo:
        """Build from a stored case's shape, boxes and ``meta["foreground"]``."""
        fg = {
            int(k): np.asarray(v, _POINT_DTYPE).reshape(-1, 3)
            for k, v in (meta_foreground or {}).items()
            if len(v)
        }
        b = empty_boxes() if boxes is None else as_boxes(boxes)
        return cls(tuple(int(s) for s in shape), b, fg)


def _uniform_origin(shape: np.ndarray, size: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform start per axis in [min(0, shape - size), max(0, shape - size)]."""
    free = shape - size
    lo, hi = np.minimum(free, 0), np.maximum(free, 0)
    return rng.integers(lo, hi + 1).astype(np.int64)


def _check(case: CaseInfo, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    shape = np.asarray(case.shape, np.int64)
    size = np.asarray(size, np.int64)
    if shape.shape != (3,) or size.shape != (3,):
        raise ValueError(
            f"case shape {case.shape} and patch size {tuple(size)} must both be (z, y, x)"
        )
    if np.any(size < 1):
        raise ValueError(f"patch size must be positive, got {tuple(size)}")
    return shape, size


class Sampler:
    """Base class: ``origin(case, patch_size, rng) -> (3,) int64`` start (z, y, x)."""

    #: True when the sampler needs ``CaseInfo.foreground`` (read from the case's JSON).
    needs_foreground = False
    name = "sampler"

    def origin(
        self, case: CaseInfo, patch_size: Sequence[int], rng: np.random.Generator
    ) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class UniformSampler(Sampler):
    """Patch origins uniform over the case (patch inside the case wherever it fits)."""

    name = "uniform"

    def origin(
        self, case: CaseInfo, patch_size: Sequence[int], rng: np.random.Generator
    ) -> np.ndarray:
        """Uniform start per axis; along axes where the case is smaller the patch overhangs it."""
        shape, size = _check(case, patch_size)
        return _uniform_origin(shape, size, rng)


@dataclass(frozen=True)
class LabelSampler(Sampler):
    """Patches centred on a voxel of a mask label.

    A label is drawn uniformly among ``labels`` present in the case (all stored
    labels when ``labels`` is None), then one of its stored foreground points.
    Cases without any such label fall back to uniform sampling.

    Parameters
    ----------
    labels : sequence of int, optional
        Mask labels to centre on (lung files: 1 = left, 2 = right).
    """

    labels: tuple[int, ...] | None = None
    name = "label"
    needs_foreground = True

    def origin(
        self, case: CaseInfo, patch_size: Sequence[int], rng: np.random.Generator
    ) -> np.ndarray:
        """Start of a patch whose centre voxel (``size // 2``) is a foreground point."""
        shape, size = _check(case, patch_size)
        wanted = (
            sorted(case.foreground)
            if self.labels is None
            else [lab for lab in self.labels if lab in case.foreground]
        )
        if not wanted:
            logger.debug(
                "case of shape %s has no foreground label %s: uniform patch",
                case.shape,
                self.labels,
            )
            return _uniform_origin(shape, size, rng)
        label = wanted[int(rng.integers(len(wanted)))]
        points = case.foreground[label]
        centre = points[int(rng.integers(len(points)))].astype(np.int64)
        return centre - size // 2


@dataclass(frozen=True)
class BoxSampler(Sampler):
    """Around nodule boxes with probability ``positive_fraction``, else uniform.

    A positive patch picks a box uniformly and places the patch so that the box
    centre lies within ``jitter`` times the free space (patch minus box size) of
    the patch centre: the whole box is inside when it fits.

    Parameters
    ----------
    positive_fraction : float
        Probability of a patch around a box (cases without boxes always get uniform ones).
    jitter : float
        Fraction (0..1) of the free space used for the random offset.
    """

    positive_fraction: float = DEFAULT_POSITIVE_FRACTION
    jitter: float = DEFAULT_JITTER
    name = "boxes"

    def __post_init__(self) -> None:
        if not 0.0 <= self.positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {self.positive_fraction}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")

    def origin(
        self, case: CaseInfo, patch_size: Sequence[int], rng: np.random.Generator
    ) -> np.ndarray:
        """Positive (around a box) or uniform start; always two draws from ``rng`` first."""
        shape, size = _check(case, patch_size)
        positive = rng.random() < self.positive_fraction
        if not positive or len(case.boxes) == 0:
            return _uniform_origin(shape, size, rng)
        box = case.boxes[int(rng.integers(len(case.boxes)))]
        centre, box_size = box[:3].astype(float), np.maximum(box[3:6].astype(float), 1.0)
        free = np.maximum((size - box_size) / 2, 0.0) * self.jitter
        shift = rng.uniform(-free, free)
        return np.round(centre + shift - (size - 1) / 2).astype(np.int64)


@dataclass(frozen=True)
class SliceSampler(Sampler):
    """A whole axial slice: origin (z, 0, 0) with z uniform over the case.

    Use a patch size of ``(1, Y, X)`` with (Y, X) the file's in-plane size; for
    2-D files every case is one slice, so the origin is (0, 0, 0).
    """

    name = "slices"

    def origin(
        self, case: CaseInfo, patch_size: Sequence[int], rng: np.random.Generator
    ) -> np.ndarray:
        """(z, 0, 0), z uniform in the case's slices."""
        shape, size = _check(case, patch_size)
        if size[0] != 1:
            raise ValueError(f"SliceSampler needs a patch size (1, y, x), got {tuple(size)}")
        return np.array([rng.integers(shape[0]), 0, 0], np.int64)


#: Sampler names accepted in ``config.ini`` ``[loader] sampler``.
SAMPLERS = {
    "uniform": UniformSampler,
    "label": LabelSampler,
    "boxes": BoxSampler,
    "slices": SliceSampler,
}


def make_sampler(name: str | Sampler, **kwargs: Any) -> Sampler:
    """Return a sampler by name (``SAMPLERS``) or pass a :class:`Sampler` through.

    Keyword arguments that the chosen sampler does not take are ignored, so the
    whole ``[loader]`` section can be passed (``positive_fraction``, ``labels``, ...).

    Raises
    ------
    ValueError
        Unknown name.
    """
    if isinstance(name, Sampler):
        return name
    try:
        cls = SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; expected one of {tuple(SAMPLERS)}") from None
    fields = getattr(cls, "__dataclass_fields__", {})
    chosen = {k: v for k, v in kwargs.items() if k in fields}
    if "labels" in chosen:
        labels = chosen["labels"]
        if labels in (None, ""):
            chosen["labels"] = None
        else:
            chosen["labels"] = tuple(int(v) for v in np.atleast_1d(labels))
    return cls(**chosen)


def sample_origins(
    cases: Sequence[CaseInfo],
    patch_size: Sequence[int],
    sampler: Sampler,
    n: int,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` patches: cases uniformly with replacement, origins from ``sampler``.

    Returns
    -------
    case_index : ndarray (n,) int64
    origins : ndarray (n, 3) int64
        Patch starts (z, y, x) in each case's frame.

    Examples
    --------
    >>> idx, org = sample_origins([CaseInfo((10, 40, 40))], (8, 16, 16), UniformSampler(), 2, rng=1)
    >>> idx.tolist(), org.shape
    ([0, 0], (2, 3))
    """
    if not cases:
        raise ValueError("sample_origins needs at least one case")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    index = rng.integers(0, len(cases), size=n).astype(np.int64)
    origins = (
        np.stack([sampler.origin(cases[i], patch_size, rng) for i in index])
        if n
        else np.zeros((0, 3), np.int64)
    )
    return index, origins
