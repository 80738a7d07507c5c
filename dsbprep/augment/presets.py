"""Augmentations from ``config.ini`` ``[augmentation]``, and the nnU-Net preset."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._base import Transform
from .compose import Compose
from .intensity import Brightness, Contrast, Gamma, GaussianBlur, GaussianNoise, LowResolution
from .spatial import (
    DEFAULT_FLIP_PROBABILITY,
    DEFAULT_ROTATE_PROBABILITY,
    Flip,
    Rot90,
    Rotate,
    Scale,
)

__all__ = ["PRESETS", "from_config", "nnunet_preset"]


def nnunet_preset() -> Compose:
    """nnU-Net v2's default 3-D training augmentation, as dsbprep transforms.

    From ``nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py`` (``get_training_transforms``
    and ``configure_rotation_dummyDA_mirroring_and_inital_patch_size`` for isotropic 3-D
    patches) and the batchgeneratorsv2 transforms it uses:

    ======================  ===========  ==============================================
    transform               probability  range
    ======================  ===========  ==============================================
    rotation, each axis     0.2          +-30 degrees (one draw decides all three)
    scaling, isotropic      0.2          0.7-1.4 (here a magnification; nnU-Net's
                                         factor multiplies the sampling grid)
    Gaussian noise          0.1          std 0-0.1 (of z-scored data: here x patch std)
    Gaussian blur           0.2 x 0.5    sigma 0.5-1 voxel, per axis
    brightness (multiply)   0.15         0.75-1.25, drawn split at 1 (BGContrast)
    contrast                0.15         0.75-1.25, split at 1, range preserved
    low resolution          0.25 x 0.5   zoom 0.5-1, all axes alike
    gamma, inverted image   0.1          0.7-1.5, split at 1, stats retained
    gamma                   0.3          0.7-1.5, split at 1, stats retained
    mirroring               0.5 per axis z, y, x
    ======================  ===========  ==============================================

    (0.2 x 0.5: nnU-Net's transform probability times its ``p_per_channel`` for a
    single-channel image.) Elastic deformation is off in nnU-Net's default too.
    Spatial transforms are resampled together, so mirroring, which nnU-Net applies
    last, is composed into the same map; noise is drawn after the spatial step as in
    nnU-Net. For 2-D patches the rotations about y and x are ignored.

    Examples
    --------
    >>> [t.name for t in nnunet_preset().transforms][:3]
    ['rotate', 'scale', 'noise']
    """
    return Compose(
        [
            Rotate(max_degrees=30.0, p=0.2, max_degrees_3d=30.0),
            Scale(zoom=(0.7, 1.4), p=0.2),
            GaussianNoise(std=(0.0, 0.1), p=0.1, unit="std"),
            GaussianBlur(sigma=(0.5, 1.0), p=0.1),
            Brightness(factor=(0.75, 1.25), p=0.15),
            Contrast(factor=(0.75, 1.25), p=0.15),
            LowResolution(zoom=(0.5, 1.0), p=0.125),
            Gamma(gamma=(0.7, 1.5), p=0.1, invert=1.0),
            Gamma(gamma=(0.7, 1.5), p=0.3, invert=0.0),
            Flip(axes=("z", "y", "x"), p=0.5),
        ]
    )


#: Named presets accepted by ``[augmentation] preset``.
PRESETS = {"nnunet": nnunet_preset}


def _names(value: Any) -> tuple[str, ...]:
    if value in (None, "", False):
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v).strip() for v in value)


def _pair(params: Mapping[str, Any], key: str, default: tuple[float, float]) -> tuple[float, float]:
    value = params.get(key, default)
    if value in (None, ""):
        return default
    values = tuple(float(v) for v in (value if isinstance(value, tuple | list) else (value,)))
    if len(values) != 2:
        raise ValueError(f"[augmentation] {key} needs two values 'low, high', got {value!r}")
    return values


def _spatial(params: Mapping[str, Any]) -> list[Transform]:
    out: list[Transform] = []
    axes = _names(params.get("flip_axes", ()))
    if axes:
        p = float(params.get("flip_probability", DEFAULT_FLIP_PROBABILITY))
        out.append(Flip(axes=axes, p=p))
    if params.get("rot90", False):
        out.append(Rot90())
    degrees = float(params.get("rotate_max_degrees", 0) or 0)
    degrees_3d = float(params.get("rotate_max_degrees_3d", 0) or 0)
    if degrees > 0 or degrees_3d > 0:
        p = float(params.get("rotate_probability", DEFAULT_ROTATE_PROBABILITY))
        out.append(Rotate(max_degrees=degrees, p=p, max_degrees_3d=degrees_3d))
    if float(params.get("scale_probability", 0) or 0) > 0:
        zoom = _pair(params, "scale_zoom", (0.7, 1.4))
        per_axis = bool(params.get("scale_per_axis", False))
        out.append(Scale(zoom=zoom, p=float(params["scale_probability"]), per_axis=per_axis))
    return out


def _intensity(params: Mapping[str, Any]) -> list[Transform]:
    def p(key: str) -> float:
        return float(params.get(f"{key}_probability", 0) or 0)

    out: list[Transform] = []
    if p("noise"):
        unit = str(params.get("noise_unit", "std") or "std")
        out.append(GaussianNoise(_pair(params, "noise_std", (0.0, 0.1)), p("noise"), unit))
    if p("blur"):
        out.append(GaussianBlur(_pair(params, "blur_sigma", (0.5, 1.0)), p("blur")))
    if p("brightness"):
        out.append(Brightness(_pair(params, "brightness_range", (0.75, 1.25)), p("brightness")))
    if p("contrast"):
        out.append(Contrast(_pair(params, "contrast_range", (0.75, 1.25)), p("contrast")))
    if p("lowres"):
        out.append(LowResolution(_pair(params, "lowres_zoom", (0.5, 1.0)), p("lowres")))
    if p("gamma"):
        invert = float(params.get("gamma_invert_probability", 0) or 0)
        out.append(Gamma(_pair(params, "gamma_range", (0.7, 1.5)), p("gamma"), invert))
    return out


def from_config(params: Mapping[str, Any]) -> Compose:
    """Build the augmentation of ``config.ini`` ``[augmentation]`` (parsed values).

    ``preset = nnunet`` returns :func:`nnunet_preset` and ignores the other keys.
    Otherwise: ``flip_axes`` (names, empty = no flips), ``flip_probability``, ``rot90``
    (bool), ``rotate_max_degrees`` / ``rotate_max_degrees_3d`` (0 = off),
    ``rotate_probability``, ``scale_zoom`` / ``scale_probability`` / ``scale_per_axis``,
    and per intensity transform a ``*_probability`` (0 = off) with its range:
    ``noise_std`` + ``noise_unit``, ``blur_sigma``, ``brightness_range``,
    ``contrast_range``, ``lowres_zoom``, ``gamma_range`` + ``gamma_invert_probability``.
    Spatial transforms come first, intensity transforms after (nnU-Net's order).

    Raises
    ------
    ValueError
        Unknown preset or a bad range.

    Examples
    --------
    >>> from_config({"flip_axes": ("y", "x"), "flip_probability": 0.5, "rot90": True,
    ...              "rotate_max_degrees": 0, "rotate_probability": 0.5})
    Compose([Flip(axes=('y', 'x'), p=0.5), Rot90()])
    """
    preset = str(params.get("preset", "") or "").strip().lower()
    if preset:
        try:
            return PRESETS[preset]()
        except KeyError:
            raise ValueError(
                f"unknown [augmentation] preset {preset!r}; expected one of {tuple(PRESETS)}"
            ) from None
    return Compose(_spatial(params) + _intensity(params))
