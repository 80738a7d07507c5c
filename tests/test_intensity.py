"""Intensity transforms, Scale, the nnU-Net preset and [augmentation] config keys."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from dsbprep.augment import (
    Brightness,
    Compose,
    Contrast,
    Flip,
    Gamma,
    GaussianBlur,
    GaussianNoise,
    LowResolution,
    Rotate,
    Scale,
    _kernels,
    from_config,
    nnunet_preset,
)
from dsbprep.config import DEFAULTS, load_config


def patch(shape=(12, 20, 24), seed=0):
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.normal(100, 40, shape), 1.5).astype(np.float32)
    mask = (image > 100).astype(np.uint8)
    return image, mask


def apply_one(transform, params, image, mask=None):
    out, out_mask, _ = Compose([transform]).apply(image, mask, None, [params])
    return out, out_mask


def test_brightness_and_contrast_literal():
    image, mask = patch()
    out, out_mask = apply_one(Brightness(), {"name": "brightness", "factor": 1.2}, image, mask)
    np.testing.assert_allclose(out, image * np.float32(1.2), rtol=1e-6)
    assert np.array_equal(out_mask, mask)  # image only
    out, _ = apply_one(Contrast(), {"name": "contrast", "factor": 1.3}, image)
    want = np.clip((image - image.mean()) * 1.3 + image.mean(), image.min(), image.max())
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("invert", [False, True])
def test_gamma_keeps_mean_and_std_and_inverts(invert):
    image, _ = patch()
    out, _ = apply_one(Gamma(), {"name": "gamma", "gamma": 0.6, "invert": invert}, image)
    np.testing.assert_allclose(out.mean(), image.mean(), rtol=1e-4)
    np.testing.assert_allclose(out.std(), image.std(), rtol=1e-3)
    x = -image if invert else image
    lo, span = x.min(), x.max() - x.min()
    curve = ((x - lo) / span) ** 0.6 * span + lo
    curve = (curve - curve.mean()) / curve.std() * x.std() + x.mean()
    np.testing.assert_allclose(out, -curve if invert else curve, rtol=1e-4, atol=1e-2)
    same, _ = apply_one(Gamma(), {"name": "gamma", "gamma": 1.0, "invert": False}, image)
    assert np.array_equal(same, image)


def test_noise_is_relative_to_the_patch_std_and_replayable():
    image, _ = patch(shape=(30, 40, 40))
    params = {"name": "noise", "std": 0.1, "seed": 5}
    out, _ = apply_one(GaussianNoise(), params, image)
    again, _ = apply_one(GaussianNoise(), params, image)
    assert np.array_equal(out, again)
    np.testing.assert_allclose((out - image).std(), 0.1 * image.std(), rtol=0.05)
    absolute, _ = apply_one(GaussianNoise(unit="value"), params, image)
    np.testing.assert_allclose((absolute - image).std(), 0.1, rtol=0.05)


def test_blur_equals_scipy():
    image, _ = patch()
    params = {"name": "blur", "sigma": [0.5, 0.8, 1.0]}
    out, _ = apply_one(GaussianBlur(), params, image)
    np.testing.assert_allclose(out, ndimage.gaussian_filter(image, [0.5, 0.8, 1.0]), atol=1e-3)


def test_low_resolution_equals_torch_interpolate():
    torch = pytest.importorskip("torch")
    image, _ = patch(shape=(10, 17, 23))
    out, _ = apply_one(LowResolution(), {"name": "lowres", "zoom": 0.6}, image)
    t = torch.from_numpy(image)[None, None]
    small = torch.nn.functional.interpolate(t, [6, 10, 14], mode="nearest-exact")
    want = torch.nn.functional.interpolate(small, image.shape, mode="trilinear")[0, 0]
    np.testing.assert_allclose(out, want.numpy(), atol=1e-3)


@pytest.mark.parametrize("zoom", [0.5, 0.6, 0.93])
def test_low_resolution_compiled_equals_numpy(monkeypatch, zoom):
    """The numba resize loop gives exactly the numpy path's values (same float32 order)."""
    if not _kernels.AVAILABLE:
        pytest.skip("numba not installed: only the numpy path exists")
    image, _ = patch(shape=(11, 19, 23), seed=3)
    params = {"name": "lowres", "zoom": zoom}
    compiled, _ = apply_one(LowResolution(), params, image)
    monkeypatch.setattr(_kernels, "AVAILABLE", False)
    numpy_path, _ = apply_one(LowResolution(), params, image)
    np.testing.assert_array_equal(compiled, numpy_path)
    assert not np.array_equal(compiled, image)  # the transform did act


def test_intensity_draws_replay_and_hit_at_their_probability():
    aug = nnunet_preset()
    image, mask = patch()
    for seed in range(5):
        out = aug(image, mask, rng=seed, pad_value=0)
        params = json.loads(json.dumps(out.params))
        again = aug.apply(image, mask, None, params, pad_value=0)
        assert np.array_equal(out.image, again[0]) and np.array_equal(out.mask, again[1])
        assert out.image.dtype == np.float32
    rng = np.random.default_rng(0)
    draws = [aug.draw(rng) for _ in range(4000)]
    noise = np.mean([d[2]["std"] > 0 for d in draws])
    gamma = np.mean([d[8]["gamma"] != 1.0 for d in draws])
    rotated = np.mean([d[0]["degrees"] != 0 for d in draws])
    np.testing.assert_allclose([noise, gamma, rotated], [0.1, 0.3, 0.2], atol=0.03)


def test_scale_zooms_about_the_centre():
    image = np.zeros((1, 41, 41), np.float32)
    image[0, 15:26, 15:26] = 100  # an 11-voxel square in the centre
    out, _, _ = Compose([Scale()]).apply(
        image[0], None, None, [{"name": "scale", "zoom": [1, 2, 2]}]
    )
    assert (out > 50).sum() == pytest.approx(22 * 22, rel=0.1)
    boxes = np.array([[0, 20, 20, 1, 11, 11, 11.0, 1]], np.float32)
    _, _, moved = Compose([Scale()]).apply(
        image[0], None, boxes, [{"name": "scale", "zoom": [1, 2, 2]}]
    )
    np.testing.assert_allclose(moved[0, 4:6], [22, 22], rtol=1e-5)
    wide = np.array([[0, 20, 20, 1, 11, 11, 11.0, 3, 10.0]], np.float32)  # 9-column boxes
    _, _, moved = Compose([Scale()]).apply(
        image[0], None, wide, [{"name": "scale", "zoom": [2, 2, 2]}]
    )
    np.testing.assert_allclose(moved[0, 6:9], [22, 3, 20], rtol=1e-5)  # readers untouched


def test_from_config_builds_every_transform_and_the_preset():
    params = load_config(None).params("augmentation")
    assert [t.name for t in from_config(params).transforms] == ["flip", "rot90"]
    on = {k: (0.5 if k.endswith("_probability") else v) for k, v in params.items()}
    on.update(rotate_max_degrees=10, rotate_max_degrees_3d=5)
    names = [t.name for t in from_config(on).transforms]
    assert names == ["flip", "rot90", "rotate", "scale", "noise", "blur", "brightness",
                     "contrast", "lowres", "gamma"]  # fmt: skip
    preset = from_config({**params, "preset": "nnunet"})
    assert repr(preset) == repr(nnunet_preset())
    with pytest.raises(ValueError, match="preset"):
        from_config({"preset": "monai"})
    assert DEFAULTS["augmentation"]["preset"] == ""


def test_invalid_intensity_settings():
    with pytest.raises(ValueError, match="probability"):
        Brightness(p=2)
    with pytest.raises(ValueError, match="unit"):
        GaussianNoise(unit="hu")
    with pytest.raises(ValueError, match="at most 1"):
        LowResolution(zoom=(0.5, 2.0))
    with pytest.raises(ValueError, match="zoom"):
        Scale(zoom=(1.5, 0.5))
    with pytest.raises(ValueError, match="max_degrees"):
        Rotate(max_degrees_3d=181)
    with pytest.raises(TypeError):
        Compose([Flip(), "noise"])


@pytest.mark.parametrize("gamma", [0.5, 0.7, 1.13, 1.5, 2.0])
@pytest.mark.parametrize("invert", [False, True])
def test_gamma_compiled_table_equals_numpy_pow(monkeypatch, gamma, invert):
    """The compiled gamma (power curve from a table, linear in between) is within 3e-4 of
    the patch's range of the numpy path's exact ``pow`` (5e-5 for gamma >= 0.7), on smooth
    and on uint8-like data."""
    if not _kernels.AVAILABLE:
        pytest.skip("numba not installed: only the numpy path exists")
    smooth, _ = patch(shape=(17, 31, 29), seed=2)
    steps = np.random.default_rng(4).integers(0, 256, (9, 40, 40)).astype(np.float32)
    params = {"name": "gamma", "gamma": gamma, "invert": invert}
    for image in (smooth, steps):
        compiled, _ = apply_one(Gamma(), params, image)
        monkeypatch.setattr(_kernels, "AVAILABLE", False)
        exact, _ = apply_one(Gamma(), params, image)
        monkeypatch.setattr(_kernels, "AVAILABLE", True)
        span = float(image.max() - image.min())
        assert np.abs(compiled - exact).max() <= (3e-4 if gamma < 0.7 else 5e-5) * span
        assert not np.allclose(compiled, image)  # the curve did act


@pytest.mark.parametrize(
    "shape, sigma",
    [((12, 20, 24), [0.5, 0.8, 1.0]), ((3, 5, 2), [1.0, 2.0, 3.0]), ((9, 1, 14), [0.0, 0.7, 0.9]),
     ((33, 41), [0.3, 0.6, 1.0]), ((1, 30, 30), [0.9, 0.5, 0.75])],
)
def test_blur_compiled_equals_scipy(shape, sigma):
    """The compiled separable blur equals scipy's gaussian_filter (reflect border), also
    with kernels wider than the axis and axes left alone (sigma 0)."""
    image = np.random.default_rng(1).normal(100, 40, shape).astype(np.float32)
    out, _ = apply_one(GaussianBlur(), {"name": "blur", "sigma": sigma}, image)
    want = ndimage.gaussian_filter(image, sigma[-image.ndim :], mode="reflect")
    np.testing.assert_allclose(out, want, atol=2e-4 * 255)
    assert not np.allclose(out, image)
