"""Intensity transforms: image values only, in float32, after the spatial transforms.

Value ranges. nnU-Net, whose defaults these follow, applies them to z-scored images
(mean 0, std 1). Here they are written so that they mean the same on dsbprep's files
whatever their value range (uint8 windowed lung volumes 0-255, int16 HU, 2-D images):

* :class:`Brightness` multiplies values: zero stays zero (uint8 windows: the darkest
  value; HU: water, so air darkens and bone brightens).
* :class:`Contrast` stretches about the patch mean and clips to the patch's range;
  :class:`Gamma` works on values rescaled to the patch's [min, max] and restores the
  mean and standard deviation: both are independent of the value range.
* :class:`GaussianNoise` draws its standard deviation in units of the patch's own
  standard deviation (``unit="std"``, the meaning of nnU-Net's 0-0.1 on z-scored
  data), or in image values (``unit="value"``).
* :class:`GaussianBlur` (sigma in voxels) and :class:`LowResolution` (a zoom factor)
  do not depend on values at all.

A loader with ``dtype="image"`` rounds and clips the result back to the file's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from . import _kernels
from ._base import IntensityTransform, check_probability, check_range, split_at_one

__all__ = ["Brightness", "Contrast", "Gamma", "GaussianBlur", "GaussianNoise", "LowResolution"]

#: Denominators below this count as zero (a constant patch).
_TINY = 1e-7
#: Seeds of the noise fields are drawn below this bound (JSON-safe integers).
_SEED_BOUND = 2**31
#: Gaussian kernel radius in standard deviations (scipy's default).
_BLUR_TRUNCATE = 4.0


def _hit(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


@dataclass(frozen=True)
class _FactorTransform(IntensityTransform):
    """A factor drawn from ``factor`` split at 1 (as nnU-Net's BGContrast), applied with
    probability ``p``; subclasses set ``name`` and ``apply_values``."""

    factor: tuple[float, float] = (0.75, 1.25)
    p: float = 0.15

    def __post_init__(self) -> None:
        check_range(*self.factor, self.name)
        check_probability(self.p, self.name)

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """``{"name": name, "factor": f}`` (1.0 when not applied)."""
        hit = _hit(rng, self.p)
        factor = split_at_one(rng, *self.factor)
        return {"name": self.name, "factor": factor if hit else 1.0}


@dataclass(frozen=True)
class Brightness(_FactorTransform):
    """Multiply the image by a factor from ``factor`` (drawn split at 1, as nnU-Net does)."""

    name = "brightness"

    def apply_values(self, image: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """``image * factor``."""
        if params["factor"] != 1.0:
            image *= np.float32(params["factor"])
        return image


@dataclass(frozen=True)
class Contrast(_FactorTransform):
    """Stretch about the patch mean by a factor from ``factor``, clipped to the patch's range."""

    name = "contrast"

    def apply_values(self, image: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """``(image - mean) * factor + mean``, clipped to [min, max] of the patch."""
        if params["factor"] == 1.0:
            return image
        low, high, mean = image.min(), image.max(), np.float32(image.mean())
        image -= mean
        image *= np.float32(params["factor"])
        image += mean
        return np.clip(image, low, high, out=image)


@dataclass(frozen=True)
class Gamma(IntensityTransform):
    """Gamma on values rescaled to [0, 1], mean and std restored (nnU-Net's GammaTransform).

    With probability ``invert`` the image is negated first and negated back after,
    which applies the gamma curve to the other end of the range (nnU-Net's "invert
    image" trick: gamma < 1 then darkens bright structures instead of lifting dark ones).
    """

    gamma: tuple[float, float] = (0.7, 1.5)
    p: float = 0.3
    invert: float = 0.0
    name = "gamma"

    def __post_init__(self) -> None:
        check_range(*self.gamma, "gamma", minimum=1e-3)
        check_probability(self.p, "gamma")
        check_probability(self.invert, "gamma invert")

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """``{"name": "gamma", "gamma": g, "invert": bool}`` (g = 1.0 when not applied)."""
        hit = _hit(rng, self.p)
        invert = bool(rng.random() < self.invert)
        gamma = split_at_one(rng, *self.gamma)
        return {"name": self.name, "gamma": gamma if hit else 1.0, "invert": invert and hit}

    def apply_values(self, image: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """The gamma curve on the (possibly negated) patch, statistics kept."""
        if params["gamma"] == 1.0:
            return image
        if _kernels.AVAILABLE and image.dtype == np.float32 and image.flags.c_contiguous:
            sign64 = -1.0 if params["invert"] else 1.0
            _kernels.gamma_in_place(image.reshape(-1), float(params["gamma"]), sign64, _TINY)
            return image
        sign = np.float32(-1.0 if params["invert"] else 1.0)
        image *= sign
        mean, std = image.mean(), image.std()
        low = image.min()
        span = max(float(image.max() - low), _TINY)
        image -= low
        image /= np.float32(span)
        np.power(image, np.float32(params["gamma"]), out=image)
        image *= np.float32(span)
        image += low
        image -= np.float32(image.mean())
        image *= np.float32(std / max(float(image.std()), _TINY))
        image += np.float32(mean)
        image *= sign
        return image


@dataclass(frozen=True)
class GaussianNoise(IntensityTransform):
    """Add zero-mean Gaussian noise whose standard deviation is drawn from ``std``.

    ``unit="std"``: the standard deviation is relative to the patch's own (nnU-Net's
    range 0-0.1 on z-scored images); ``unit="value"``: in image values. The noise field
    comes from a seed recorded in the parameters, so a replay adds the same noise.
    """

    std: tuple[float, float] = (0.0, 0.1)
    p: float = 0.1
    unit: str = "std"
    name = "noise"

    def __post_init__(self) -> None:
        check_range(*self.std, "noise std")
        check_probability(self.p, "noise")
        if self.unit not in ("std", "value"):
            raise ValueError(f"noise unit must be 'std' or 'value', got {self.unit!r}")

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """``{"name": "noise", "std": s, "seed": n}`` (s = 0.0 when not applied)."""
        hit = _hit(rng, self.p)
        std = float(rng.uniform(*self.std))
        seed = int(rng.integers(_SEED_BOUND))
        return {"name": self.name, "std": std if hit else 0.0, "seed": seed}

    def apply_values(self, image: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """``image + N(0, std)`` (std scaled by the patch's std for ``unit="std"``)."""
        std = float(params["std"])
        if std == 0.0:
            return image
        if self.unit == "std":
            std *= float(image.std())
        noise = np.random.default_rng(int(params["seed"])).standard_normal(
            image.shape, dtype=np.float32
        )
        noise *= np.float32(std)
        image += noise
        return image


@dataclass(frozen=True)
class GaussianBlur(IntensityTransform):
    """Gaussian smoothing with sigma (voxels) drawn per axis from ``sigma``."""

    sigma: tuple[float, float] = (0.5, 1.0)
    p: float = 0.1
    name = "blur"

    def __post_init__(self) -> None:
        check_range(*self.sigma, "blur sigma")
        check_probability(self.p, "blur")

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """``{"name": "blur", "sigma": [z, y, x]}`` (all 0.0 when not applied)."""
        hit = _hit(rng, self.p)
        sigma = rng.uniform(self.sigma[0], self.sigma[1], 3)
        return {"name": self.name, "sigma": [float(s) if hit else 0.0 for s in sigma]}

    def apply_values(self, image: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """``scipy.ndimage.gaussian_filter`` with mirrored borders (``reflect``)."""
        sigma = params["sigma"][-image.ndim :]
        if not any(sigma):
            return image
        if _kernels.AVAILABLE and image.dtype == np.float32 and image.flags.c_contiguous:
            return _separable_blur(image, sigma)
        return ndimage.gaussian_filter(
            image, sigma, mode="reflect", truncate=_BLUR_TRUNCATE, output=image
        )


def _gaussian_weights(sigma: float) -> np.ndarray:
    """scipy.ndimage's 1-D Gaussian kernel (radius ``int(truncate * sigma + 0.5)``)."""
    radius = int(_BLUR_TRUNCATE * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / float(sigma) ** 2 * x**2)
    return phi / phi.sum()


def _separable_blur(image: np.ndarray, sigma) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(image, sigma, mode="reflect")`` in place, axis by
    axis with the compiled loops (float32 sums: within 1e-4 of scipy's float64 ones on
    0-255 values); axes with sigma 0 are left alone, as scipy does."""
    spare = np.empty_like(image)
    current = image
    for axis, s in enumerate(sigma):
        if s <= 1e-15:
            continue
        weights = _gaussian_weights(s)
        shape = image.shape
        if axis == image.ndim - 1:
            _kernels.blur_rows(current.reshape(-1, shape[-1]), weights,
                               spare.reshape(-1, shape[-1]))
        else:
            pre, post = int(np.prod(shape[:axis])), int(np.prod(shape[axis + 1 :]))
            _kernels.blur_middle(current.reshape(pre, shape[axis], post), weights,
                                 spare.reshape(pre, shape[axis], post))
        current, spare = spare, current
    if current is not image:
        image[...] = current
    return image


@dataclass(frozen=True)
class LowResolution(IntensityTransform):
    """Simulate a coarser scan: nearest down-sampling by a factor from ``zoom``, linear back up.

    As nnU-Net's SimulateLowResolutionTransform (one factor for all axes; torch's
    ``nearest-exact`` down and ``align_corners=False`` linear up).
    """

    zoom: tuple[float, float] = (0.5, 1.0)
    p: float = 0.125
    name = "lowres"

    def __post_init__(self) -> None:
        check_range(*self.zoom, "low-resolution zoom", minimum=1e-3)
        if self.zoom[1] > 1.0:
            raise ValueError(f"low-resolution zoom must be at most 1, got {self.zoom}")
        check_probability(self.p, "low-resolution")

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """``{"name": "lowres", "zoom": f}`` (1.0 when not applied)."""
        hit = _hit(rng, self.p)
        zoom = float(rng.uniform(*self.zoom))
        return {"name": self.name, "zoom": zoom if hit else 1.0}

    def apply_values(self, image: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """Down to ``round(n * zoom)`` voxels per axis (z kept for slices), then back."""
        zoom = float(params["zoom"])
        if zoom == 1.0:
            return image
        small = image
        for axis, n in enumerate(image.shape):
            m = max(1, round(n * zoom)) if n > 1 else 1
            pick = np.minimum(np.floor((np.arange(m) + 0.5) * n / m), n - 1).astype(np.intp)
            small = np.take(small, pick, axis=axis)
        for axis, n in enumerate(image.shape):
            small = _linear_resize(small, axis, n)
        image[...] = small
        return image


def _linear_resize(a: np.ndarray, axis: int, n: int) -> np.ndarray:
    """Linear resize of one axis to ``n`` samples (``align_corners=False``, edges clamped)."""
    m = a.shape[axis]
    if m == n:
        return a
    source = np.maximum((np.arange(n) + 0.5) * m / n - 0.5, 0.0)
    low = np.minimum(np.floor(source), m - 1).astype(np.intp)
    high = np.minimum(low + 1, m - 1)
    weight = (source - low).astype(np.float32)
    if _kernels.AVAILABLE and a.dtype == np.float32:
        pre, post = int(np.prod(a.shape[:axis])), int(np.prod(a.shape[axis + 1 :]))
        out = np.empty(a.shape[:axis] + (n,) + a.shape[axis + 1 :], np.float32)
        source3 = np.ascontiguousarray(a).reshape(pre, m, post)
        _kernels.resize_middle(source3, low, high, weight, out.reshape(pre, n, post))
        return out
    shape = [1] * a.ndim
    shape[axis] = n
    lower = np.take(a, low, axis=axis)
    return lower + (np.take(a, high, axis=axis) - lower) * weight.reshape(shape)
