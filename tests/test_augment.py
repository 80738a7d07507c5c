"""dsbprep.augment: draw-then-apply transforms on image, mask and boxes together."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dsbprep.augment import Compose, Flip, Rot90, Rotate, from_config


def _point(shape, at):
    """Image with one bright voxel, its mask, and a 1-voxel box centred on it."""
    image = np.zeros(shape, np.uint8)
    image[at] = 200
    mask = (image > 0).astype(np.uint8)
    centre = [0.0] * (3 - len(shape)) + [float(a) for a in at]
    boxes = np.array([[*centre, 1, 1, 1, 5.0, 4]], np.float32)
    return image, mask, boxes


def _box_matches_voxel(mask, boxes):
    (voxel,) = np.argwhere(mask)
    centre = boxes[0, 3 - mask.ndim : 3]
    np.testing.assert_allclose(centre, voxel, atol=1e-4)


def test_flip_literal():
    image = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
    out, mask, _ = Flip(axes=("x",), p=1.0).apply(
        image, image > 4, None, {"name": "flip", "axes": ["x"]}
    )
    assert out.tolist() == [[3, 2, 1], [6, 5, 4]]
    assert mask.tolist() == [[False, False, False], [True, True, False]]
    # A z flip of a 2-D slice changes nothing.
    same, _, _ = Flip().apply(image, None, None, {"name": "flip", "axes": ["z"]})
    assert np.array_equal(same, image)


@pytest.mark.parametrize("axes", [["z"], ["y"], ["x"], ["z", "x"], ["z", "y", "x"]])
def test_flip_moves_boxes_with_the_voxel(axes):
    image, mask, boxes = _point((5, 7, 9), (1, 2, 6))
    img2, mask2, boxes2 = Flip().apply(image, mask, boxes, {"name": "flip", "axes": axes})
    assert np.array_equal(img2 > 0, mask2 > 0)
    _box_matches_voxel(mask2, boxes2)
    assert boxes2[0, 6] == 5.0 and boxes2[0, 7] == 4  # diameter and readers untouched


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("shape,at", [((4, 6, 9), (2, 1, 7)), ((6, 9), (4, 2))])
def test_rot90_matches_numpy_and_moves_boxes(k, shape, at):
    image, mask, boxes = _point(shape, at)
    boxes[0, 4:6] = (3, 1)  # an elongated box: y and x sizes swap on odd k
    img2, mask2, boxes2 = Rot90().apply(image, mask, boxes, {"name": "rot90", "k": k})
    assert np.array_equal(img2, np.rot90(image, k, axes=(-2, -1)))
    _box_matches_voxel(mask2, boxes2)
    assert tuple(boxes2[0, 4:6]) == ((1, 3) if k % 2 else (3, 1))


def test_rotate_by_90_degrees_equals_rot90():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (3, 11, 11), dtype=np.uint8)
    mask = (image > 128).astype(np.uint8)
    got, got_mask, _ = Rotate().apply(image, mask, None, {"name": "rotate", "degrees": 90.0})
    want = np.rot90(image, 1, axes=(-2, -1))
    assert np.array_equal(got, want)
    assert np.array_equal(got_mask, np.rot90(mask, 1, axes=(-2, -1)))


@pytest.mark.parametrize("degrees", [-12.0, 7.5, 30.0])
def test_rotate_moves_box_to_the_rotated_blob(degrees):
    image = np.full((3, 41, 41), 20, np.uint8)
    mask = np.zeros(image.shape, np.uint8)
    mask[:, 8:13, 25:30] = 3  # a 5x5 blob off centre
    image[mask > 0] = 220
    boxes = np.array([[1, 10, 27, 3, 5, 5, 5, 1]], np.float32)
    img2, mask2, boxes2 = Rotate(max_degrees=30).apply(
        image, mask, boxes, {"name": "rotate", "degrees": degrees}, pad_value=170
    )
    assert set(np.unique(mask2)) <= {0, 3}  # order 0: labels never blend
    centroid = np.argwhere(mask2[1] == 3).mean(axis=0)
    np.testing.assert_allclose(boxes2[0, 1:3], centroid, atol=0.6)
    theta = np.radians(abs(degrees))
    np.testing.assert_allclose(boxes2[0, 4], 5 * (np.cos(theta) + np.sin(theta)), rtol=1e-5)
    # Corners come from outside: pad value in the image, linear interpolation inside.
    assert img2[1, 0, 0] == 170
    assert img2.dtype == np.uint8


def test_rotate_context_covers_the_rotated_patch():
    ctx = Rotate(max_degrees=15).context((96, 96, 96))
    assert ctx[0] == 0 and ctx[1] == ctx[2]
    half = 48
    assert half + ctx[1] >= half * (np.cos(np.radians(15)) + np.sin(np.radians(15)))
    assert Rotate(max_degrees=0).context((96, 96, 96)).tolist() == [0, 0, 0]


def test_compose_replays_exactly_and_params_are_json():
    rng = np.random.default_rng(11)
    image = rng.integers(0, 255, (8, 16, 16), dtype=np.uint8)
    mask = (image > 100).astype(np.uint8)
    boxes = np.array([[3, 4, 5, 2, 2, 2, 3.0, 1]], np.float32)
    aug = Compose([Flip(), Rot90(), Rotate(max_degrees=10, p=1.0)])
    seen = set()
    for seed in range(6):
        out = aug(image, mask, boxes, rng=seed, pad_value=170)
        again = aug.apply(image, mask, boxes, json.loads(json.dumps(out.params)), pad_value=170)
        assert np.array_equal(out.image, again[0]) and np.array_equal(out.mask, again[1])
        np.testing.assert_array_equal(out.boxes, again[2])
        seen.add(json.dumps(out.params))
    assert len(seen) == 6  # different seeds, different draws
    assert aug.draw(np.random.default_rng(5)) == aug.draw(np.random.default_rng(5))


def test_compose_rejects_foreign_params():
    aug = Compose([Flip(), Rot90()])
    image = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="2 transforms"):
        aug.apply(image, None, None, [{"name": "flip", "axes": []}])
    with pytest.raises(ValueError, match="rot90"):
        aug.apply(image, None, None, [{"name": "flip", "axes": []}, {"name": "flip", "axes": []}])
    with pytest.raises(ValueError, match="same shape"):
        aug.apply(image, np.zeros((3, 4)), None, aug.draw(0))
    with pytest.raises(TypeError):
        Compose([np.flip])


def test_flip_probability_is_respected():
    flip = Flip(axes=("z", "y", "x"), p=0.3)
    rng = np.random.default_rng(0)
    hits = np.array([[a in flip.draw(rng)["axes"] for a in "zyx"] for _ in range(3000)])
    np.testing.assert_allclose(hits.mean(axis=0), 0.3, atol=0.03)
    ks = [Rot90().draw(rng)["k"] for _ in range(2000)]
    assert set(ks) == {0, 1, 2, 3}


def test_invalid_settings():
    with pytest.raises(ValueError, match="unknown axis 'w'"):
        Flip(axes=("w",))
    with pytest.raises(ValueError, match="probability"):
        Flip(p=1.5)
    with pytest.raises(ValueError, match="max_degrees"):
        Rotate(max_degrees=200)


def test_from_config():
    aug = from_config(
        {
            "flip_axes": ("z", "y", "x"),
            "flip_probability": 0.5,
            "rot90": True,
            "rotate_max_degrees": 0,
            "rotate_probability": 0.5,
        }
    )
    assert [t.name for t in aug.transforms] == ["flip", "rot90"]
    aug = from_config(
        {
            "flip_axes": "x",
            "flip_probability": 1.0,
            "rot90": False,
            "rotate_max_degrees": 8,
            "rotate_probability": 0.25,
        }
    )
    assert aug.transforms == [Flip(axes=("x",), p=1.0), Rotate(max_degrees=8.0, p=0.25)]
    assert len(from_config({"flip_axes": "", "rot90": False, "rotate_max_degrees": 0})) == 0
