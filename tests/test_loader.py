"""dsbprep.loader: epochs, samplers, augmentation, reproducibility, processes and the CLI."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import re

import numpy as np
import pytest

from dsbprep.augment import Compose, Flip, Rot90, Rotate
from dsbprep.config import load_config
from dsbprep.loader import MAX_AUTO_THREADS, BatchLoader, epoch_order, loader_from_config, main
from dsbprep.patches import BoxSampler, CaseInfo, LabelSampler, UniformSampler, sample_origins
from dsbprep.store import CaseData, DatasetWriter, open_dataset

PAD = 170  # the lung files' pad value (grt123's fill outside the lungs)
NODULE = 3  # mask label of nodules in the test volumes (lungs: 1 = left, 2 = right)


def lung_case(shape, seed):
    """A lung-like uint8 volume: body, two lungs (1 = left at high x, 2 = right), nodules."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    z, y, x = np.ogrid[:nz, :ny, :nx]
    body = ((y - ny / 2) / (0.45 * ny)) ** 2 + ((x - nx / 2) / (0.47 * nx)) ** 2 < 1
    mask = np.zeros(shape, np.uint8)
    for label, cx in ((2, 0.3 * nx), (1, 0.7 * nx)):
        lung = (
            ((z - nz / 2) / (0.45 * nz)) ** 2
            + ((y - ny / 2) / (0.33 * ny)) ** 2
            + ((x - cx) / (0.16 * nx)) ** 2
        ) < 1
        mask[lung] = label
    image = np.broadcast_to(np.where(body, 140, PAD), shape).astype(np.int16)
    image[mask > 0] = 40
    boxes = []
    for cx in (0.3 * nx, 0.7 * nx):
        c = np.array([nz / 2 + rng.integers(-5, 6), ny / 2 + rng.integers(-10, 11), cx])
        r = float(rng.integers(3, 6))
        ball = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r
        mask[ball] = NODULE
        image[ball] = 200
        boxes.append([*c, 2 * r + 1, 2 * r + 1, 2 * r + 1, 2 * r, 4])
    image = np.clip(image + rng.normal(0, 6, shape), 0, 255).astype(np.uint8)
    return image, mask, np.array(boxes, np.float32)


SHAPES = [(120, 160, 200), (100, 150, 180), (90, 170, 160), (110, 140, 190), (80, 160, 170)]
SPLITS = ["train", "train", "val", "test", "train"]


@pytest.fixture(scope="module")
def lung_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("loader") / "lung.h5"
    cases = {}
    with DatasetWriter(path, chunks=(32, 64, 64), compression="blosc-lz4", pad_value=PAD) as w:
        for k, (shape, split) in enumerate(zip(SHAPES, SPLITS, strict=True)):
            image, mask, boxes = lung_case(shape, k)
            cases[f"case{k}"] = (image, mask, boxes)
            w.append(
                CaseData(f"case{k}", image, mask, spacing=(1.0, 1.0, 1.0), boxes=boxes, split=split)
            )
    return path, cases


@pytest.fixture(scope="module")
def slice_file(tmp_path_factory):
    """96 2-D 256x256 slices (like the seed's cardiac MR set)."""
    path = tmp_path_factory.mktemp("slices") / "slices.h5"
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:256, :256]
    with DatasetWriter(path, kind="slices", compression="lzf", image_dtype="uint16") as w:
        for k in range(96):
            cy, cx, r = rng.integers(90, 160), rng.integers(90, 160), rng.integers(15, 40)
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            mask = inside.astype(np.uint8)
            image = (rng.integers(0, 300, (256, 256)) + 500 * inside).astype(np.uint16)
            w.append(CaseData(f"SC-{k:03d}", image, mask, spacing=(8.0, 1.37, 1.37)))
    return path


def padded_cut(volume, start, size, pad):
    """Straightforward reference: the box of ``volume`` at ``start``, padded outside."""
    out = np.full(size, pad, volume.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, volume.shape, strict=True):
        lo, hi = max(s, 0), min(s + n, dim)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - s, max(hi, lo) - s))
    out[tuple(dst)] = volume[tuple(src)]
    return out


# -- epochs ----------------------------------------------------------------------


def test_epochs_visit_every_case_once_in_fresh_orders(lung_file):
    path, _ = lung_file
    loader = BatchLoader(path, patch_size=(32, 32, 32), batch_size=2, epochs=3, seed=4)
    batches = list(loader)
    assert len(loader) == 3 and len(batches) == 9
    assert [len(b) for b in batches[:3]] == [2, 2, 1]
    orders = []
    for epoch in range(3):
        order = np.concatenate([b.indices for b in batches if b.epoch == epoch])
        assert sorted(order.tolist()) == [0, 1, 2, 3, 4]
        orders.append(order.tolist())
    assert len({tuple(o) for o in orders}) > 1
    assert [b.number for b in batches[:3]] == [0, 1, 2]
    dropped = BatchLoader(path, patch_size=(32, 32, 32), batch_size=2, epochs=1, drop_last=True)
    assert [len(b) for b in dropped] == [2, 2]
    plain = BatchLoader(path, patch_size=(32, 32, 32), batch_size=5, shuffle=False)
    assert plain.epoch_batches(7)[0].tolist() == [0, 1, 2, 3, 4]


def test_epoch_order_depends_on_seed_and_epoch():
    a = epoch_order(1, 0, range(50))
    assert np.array_equal(a, epoch_order(1, 0, range(50)))
    assert not np.array_equal(a, epoch_order(2, 0, range(50)))
    assert not np.array_equal(a, epoch_order(1, 1, range(50)))


def test_infinite_mode_keeps_going(lung_file):
    path, _ = lung_file
    loader = BatchLoader(path, patch_size=(16, 16, 16), batch_size=5, epochs=None, seed=0)
    it = iter(loader)
    epochs = [next(it).epoch for _ in range(4)]
    assert epochs == [0, 1, 2, 3]


def test_split_selects_cases(lung_file):
    path, _ = lung_file
    loader = BatchLoader(path, patch_size=(16, 16, 16), batch_size=8, split="train", epochs=1)
    (batch,) = list(loader)
    assert sorted(batch.case_ids) == ["case0", "case1", "case4"]
    both = BatchLoader(path, patch_size=(16, 16, 16), split=["val", "test"])
    assert both.indices.tolist() == [2, 3]
    with pytest.raises(ValueError, match="unknown split 'tarin'"):
        BatchLoader(path, split="tarin")


# -- patch content -----------------------------------------------------------------


def test_patches_equal_the_stored_arrays_with_padding(lung_file):
    path, cases = lung_file
    loader = BatchLoader(
        path, patch_size=(40, 48, 56), batch_size=5, epochs=2, seed=1, dtype="image"
    )
    with open_dataset(path) as ds:
        for batch in loader:
            assert batch.images.dtype == np.uint8 and batch.images.shape == (
                len(batch),
                1,
                40,
                48,
                56,
            )
            for b, (cid, origin) in enumerate(zip(batch.case_ids, batch.origins, strict=True)):
                image, mask, _ = cases[cid]
                assert np.array_equal(
                    batch.images[b, 0], padded_cut(image, origin, (40, 48, 56), PAD)
                )
                assert np.array_equal(batch.masks[b, 0], padded_cut(mask, origin, (40, 48, 56), 0))
        # The loader's own region reader agrees with the store's, inside and across borders.
        rng = np.random.default_rng(0)
        for _ in range(20):
            i = int(rng.integers(len(ds)))
            start = rng.integers(-40, 150, 3)
            size = rng.integers(1, 70, 3)
            got = loader.read_region(i, start, size)
            want = ds.read_region(i, start, size)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_border_patch_is_padded(lung_file):
    path, cases = lung_file
    loader = BatchLoader(path, patch_size=(32, 32, 32), dtype="float32")
    sample = loader.load(0, (-10, -5, 190), [])
    assert sample.image.dtype == np.uint8  # samples keep the file dtype; batches convert
    assert np.all(sample.image[:10] == PAD) and np.all(sample.mask[:10] == 0)
    assert np.all(sample.image[:, :, 10:] == PAD)  # x >= 200 lies outside case0
    image = cases["case0"][0]
    assert np.array_equal(sample.image[10:, 5:, :10], image[:22, :27, 190:])


def test_label_sampler_centres_on_the_label(lung_file):
    path, cases = lung_file
    loader = BatchLoader(
        path,
        patch_size=(33, 33, 33),
        batch_size=5,
        sampler="label",
        sampler_options={"labels": (2,)},
        epochs=4,
        seed=3,
        dtype="image",
    )
    for batch in loader:
        for b in range(len(batch)):
            assert batch.masks[b, 0, 16, 16, 16] == 2
    anywhere = LabelSampler()
    info = CaseInfo((10, 10, 10), foreground={1: np.array([[2, 3, 4]])})
    assert anywhere.origin(info, (4, 4, 4), np.random.default_rng(0)).tolist() == [0, 1, 2]
    # No foreground: uniform fallback inside the case.
    origin = anywhere.origin(CaseInfo((10, 10, 10)), (4, 4, 4), np.random.default_rng(0))
    assert np.all((origin >= 0) & (origin <= 6))


def test_box_sampler_positive_fraction(lung_file):
    path, _ = lung_file
    loader = BatchLoader(
        path,
        patch_size=(32, 32, 32),
        batch_size=5,
        sampler="boxes",
        sampler_options={"positive_fraction": 1.0},
        epochs=3,
        seed=5,
        dtype="image",
    )
    for batch in loader:
        for b in range(len(batch)):
            assert len(batch.boxes[b]) >= 1
            assert (batch.masks[b] == NODULE).any()  # the whole nodule fits: it is in the patch
    sampler = BoxSampler(positive_fraction=0.25)
    case = CaseInfo((100, 200, 200), boxes=np.array([[50, 100, 100, 6, 6, 6, 6, 1]], np.float32))
    rng = np.random.default_rng(0)
    near = []
    for _ in range(2000):
        o = sampler.origin(case, (32, 32, 32), rng)
        near.append(bool(np.all((o <= [47, 97, 97]) & (o + 32 >= [53, 103, 103]))))
    # Positives always contain the box; a uniform patch does so rarely (~2 %).
    assert 0.22 < np.mean(near) < 0.32
    with pytest.raises(ValueError, match="positive_fraction"):
        BoxSampler(positive_fraction=2)


def test_uniform_sampler_stays_inside_where_it_fits():
    rng = np.random.default_rng(1)
    idx, origins = sample_origins(
        [CaseInfo((50, 60, 20))], (16, 16, 32), UniformSampler(), 500, rng
    )
    assert idx.tolist() == [0] * 500
    assert origins[:, 0].min() >= 0 and origins[:, 0].max() <= 34
    assert origins[:, 2].min() >= -12 and origins[:, 2].max() <= 0  # x: case narrower than patch


# -- augmentation and reproducibility ----------------------------------------------------


def aug_all():
    return Compose([Flip(), Rot90(), Rotate(max_degrees=15, p=0.7)])


def test_same_seed_same_batches_and_replay(lung_file):
    path, _ = lung_file
    kwargs = {
        "patch_size": (24, 40, 40),
        "batch_size": 3,
        "augment": aug_all(),
        "seed": 9,
        "epochs": 2,
    }
    first = list(BatchLoader(path, **kwargs))
    second = list(BatchLoader(path, **kwargs))
    other = list(BatchLoader(path, **{**kwargs, "seed": 10}))
    loader = BatchLoader(path, **kwargs)
    for a, b, c in zip(first, second, other, strict=True):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
        assert a.params == b.params and np.array_equal(a.origins, b.origins)
        assert not np.array_equal(a.origins, c.origins)
        replayed = loader.replay(a)
        assert np.array_equal(replayed.images, a.images) and np.array_equal(replayed.masks, a.masks)
        for x, y in zip(replayed.boxes, a.boxes, strict=True):
            np.testing.assert_array_equal(x, y)
    assert any(p[2]["degrees"] != 0 for batch in first for p in batch.params)


def test_samples_do_not_depend_on_batch_size(lung_file):
    path, _ = lung_file
    by2 = BatchLoader(
        path, patch_size=(16, 32, 32), batch_size=2, augment=aug_all(), seed=2, epochs=2
    )
    by5 = BatchLoader(
        path, patch_size=(16, 32, 32), batch_size=5, augment=aug_all(), seed=2, epochs=2
    )
    got = {(b.epoch, i): img for b in by2 for i, img in zip(b.indices, b.images, strict=True)}
    for batch in by5:
        for i, img in zip(batch.indices, batch.images, strict=True):
            assert np.array_equal(got[(batch.epoch, i)], img)


def test_augmented_boxes_follow_the_nodules(lung_file):
    """After flips, rot90 and rotation (read with context, cropped) boxes sit on the nodule."""
    path, _ = lung_file
    loader = BatchLoader(
        path,
        patch_size=(32, 48, 48),
        batch_size=5,
        sampler="boxes",
        augment=aug_all(),
        sampler_options={"positive_fraction": 1.0},
        seed=6,
        epochs=4,
        dtype="image",
    )
    checked = 0
    for batch in loader:
        for b in range(len(batch)):
            nodule = batch.masks[b, 0] == NODULE
            for box in batch.boxes[b]:
                c = np.round(box[:3]).astype(int)
                if np.all(c >= 2) and np.all(c < np.array(nodule.shape) - 2):
                    assert nodule[
                        c[0] - 1 : c[0] + 2, c[1] - 1 : c[1] + 2, c[2] - 1 : c[2] + 2
                    ].any()
                    checked += 1
    assert checked >= 10


def test_rotation_reads_context_instead_of_padding(lung_file):
    path, _ = lung_file
    aug = Compose([Rotate(max_degrees=20, p=1.0)])
    loader = BatchLoader(path, patch_size=(8, 40, 40), augment=aug, seed=0, dtype="image")
    # A patch well inside the body: after rotation no corner holds the outside pad value.
    sample = loader.load(0, (56, 60, 80), [{"name": "rotate", "degrees": 19.0}])
    assert sample.image.shape == (8, 40, 40)
    assert (sample.image != PAD).all()


def test_channels_last_and_dtypes(lung_file):
    path, _ = lung_file
    loader = BatchLoader(
        path, patch_size=(8, 16, 16), batch_size=4, channels_last=True, dtype="float16"
    )
    batch = next(iter(loader))
    assert batch.images.shape == (4, 8, 16, 16, 1) and batch.images.dtype == np.float16
    assert batch.masks.shape == (4, 8, 16, 16, 1) and batch.masks.dtype == np.uint8


def test_invalid_arguments(lung_file, tmp_path):
    path, _ = lung_file
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(path, batch_size=0)
    with pytest.raises(ValueError, match="square in-plane"):
        BatchLoader(path, patch_size=(16, 16, 32), augment=Compose([Rot90()]))
    with pytest.raises(ValueError, match="unknown sampler 'nodules'"):
        BatchLoader(path, sampler="nodules")
    with pytest.raises(ValueError, match="patch_size"):
        BatchLoader(path, patch_size=(16, 16, 16, 16))
    with pytest.raises(ValueError, match="dtype"):
        BatchLoader(path, dtype="int64")
    with pytest.raises(FileNotFoundError, match="absent.h5"):
        BatchLoader(tmp_path / "absent.h5")


# -- processes ---------------------------------------------------------------------


def _worker_samples(args):
    loader, keys = args
    out = []
    for epoch, index in keys:
        s = loader.sample(epoch, index)
        out.append((s.image.copy(), s.mask.copy(), s.params))
    return out


def test_pickle_drops_the_handle_and_forked_workers_agree(lung_file):
    path, _ = lung_file
    loader = BatchLoader(path, patch_size=(24, 32, 32), augment=aug_all(), seed=8)
    keys = [(e, i) for e in range(2) for i in range(5)]
    want = _worker_samples((loader, keys))  # opens the file in this (parent) process
    assert loader._ds is not None
    clone = pickle.loads(pickle.dumps(loader))
    assert clone._ds is None
    got = _worker_samples((clone, keys))
    for ctx_name in ("fork", "spawn"):
        ctx = multiprocessing.get_context(ctx_name)
        with ctx.Pool(2) as pool:
            parts = pool.map(_worker_samples, [(loader, keys[:5]), (loader, keys[5:])])
        assert len(parts[0]) + len(parts[1]) == len(keys)
        for (a, am, ap), (b, bm, bp) in zip(want, parts[0] + parts[1], strict=True):
            assert np.array_equal(a, b) and np.array_equal(am, bm) and ap == bp
    for (a, _, _), (b, _, _) in zip(want, got, strict=True):
        assert np.array_equal(a, b)


# -- 2-D files and the command line ----------------------------------------------------


def test_slices_file_yields_whole_slices(slice_file):
    loader = BatchLoader(
        slice_file, batch_size=16, epochs=1, seed=0, augment=Compose([Flip(), Rot90()])
    )
    batches = list(loader)
    assert loader.two_d and loader.patch_size == (256, 256)
    assert [b.images.shape for b in batches] == [(16, 1, 256, 256)] * 6
    assert sorted(np.concatenate([b.indices for b in batches]).tolist()) == list(range(96))
    with open_dataset(slice_file) as ds:
        b = batches[0]
        original = ds[int(b.indices[0])].image[0]
    flips = b.params[0]
    want = original
    if "y" in flips[0]["axes"]:
        want = want[::-1]
    if "x" in flips[0]["axes"]:
        want = want[:, ::-1]
    want = np.rot90(want, flips[1]["k"])
    assert np.array_equal(b.images[0, 0], want.astype(np.float32))


SEED_HEADER = """Number of images: 96
Number of masks: 96
Image size = (256, 256, 1) pixels
Mask size = (256, 256, 1) pixels
Batch size = 16
Number of epochs = 3
"""


def test_cli_prints_batch_indices_like_the_seed(slice_file, capsys):
    assert (
        main(
            [
                "--input_filename",
                str(slice_file),
                "--batchsize",
                "16",
                "--epochs",
                "3",
                "--print_batch_indices",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith(SEED_HEADER)
    lines = out.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith("**********")]
    assert [lines[i] for i in heads] == [f"********** EPOCH {e} **************" for e in (1, 2, 3)]
    epochs = []
    for h in heads:
        rows = lines[h + 1 : h + 7]
        assert all(re.fullmatch(r"\[ *\d+( +\d+){15}\]", r) for r in rows), rows
        values = [[int(v) for v in r.strip("[]").split()] for r in rows]
        assert all(v == sorted(v) for v in values)
        assert sorted(sum(values, [])) == list(range(96))
        epochs.append(values)
    assert epochs[0] != epochs[1]
    # The same command prints the same indices again.
    assert (
        main(
            [
                "--input_filename",
                str(slice_file),
                "--batchsize",
                "16",
                "--epochs",
                "3",
                "--print_batch_indices",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == out


def test_cli_random_image_and_loading(lung_file, tmp_path, capsys):
    path, _ = lung_file
    figure = tmp_path / "fig" / "patches.png"
    config = tmp_path / "config.ini"
    config.write_text(
        f"[loader]\nfigure = {figure}\npatch_size = 32, 48, 48\n"
        "[augmentation]\nrotate_max_degrees = 10\n"
    )
    assert (
        main(
            [
                "--input_filename",
                str(path),
                "--print_random_image",
                "--config",
                str(config),
                "--epochs",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Image size = (32, 48, 48, 1) voxels" in out and str(figure) in out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    assert (
        main(
            [
                "--input_filename",
                str(path),
                "--config",
                str(config),
                "--batchsize",
                "2",
                "--epochs",
                "1",
            ]
        )
        == 0
    )
    assert re.search(r"Loaded 5 patches in [\d.]+ s", capsys.readouterr().out)
    assert main(["--input_filename", str(tmp_path / "none.h5")]) == 2
    assert "none.h5" in capsys.readouterr().err


def test_loader_from_config_defaults(lung_file):
    path, _ = lung_file
    loader = loader_from_config(path, load_config(None, overrides={"loader": {"batch_size": 3}}))
    assert loader.batch_size == 3 and loader.patch_size == (96, 96, 96)
    assert [t.name for t in loader.augment.transforms] == ["flip", "rot90"]
    assert loader.sampler.name == "uniform" and loader.epochs == 3


def test_real_lung_volume_label_patches(reference_npz, tmp_path):
    """grt123's preprocessed LIDC-IDRI-0001 volume: label patches are centred in the lung."""
    clean = np.load(reference_npz)["clean"][0]
    lung = (clean != PAD).astype(np.uint8)  # grt123 fills everything outside the lungs with 170
    path = tmp_path / "lidc.h5"
    with DatasetWriter(path, pad_value=PAD, compression="blosc-lz4") as w:
        w.append(CaseData("LIDC-IDRI-0001", clean, lung))
    loader = BatchLoader(
        path,
        patch_size=(64, 64, 64),
        batch_size=1,
        sampler="label",
        epochs=8,
        augment=Compose([Flip(), Rot90()]),
        seed=0,
        dtype="image",
    )
    for batch in loader:
        assert batch.masks[0, 0, 32, 32, 32] == 1
        assert batch.images[0, 0, 32, 32, 32] != PAD


def test_load_batch_fills_given_arrays(lung_file):
    path, _ = lung_file
    loader = BatchLoader(path, patch_size=(8, 16, 16), batch_size=3, seed=1)
    idx = loader.epoch_batches(0)[0]
    images = np.zeros(loader.batch_shape(3), np.float32)
    masks = np.zeros(loader.batch_shape(3), np.uint8)
    batch = loader.load_batch(idx, epoch=0, out=(images, masks))
    assert batch.images is images and batch.masks is masks
    assert np.array_equal(images, loader.load_batch(idx, epoch=0).images)
    with pytest.raises(ValueError, match="out arrays"):
        loader.load_batch(idx, epoch=0, out=(images[:2], masks[:2]))


def test_iteration_reuses_only_batch_arrays_nobody_holds(lung_file):
    """Batch arrays are recycled (no fresh pages per batch) but never under a holder."""
    path, _ = lung_file
    kwargs = {
        "patch_size": (8, 16, 16),
        "batch_size": 2,
        "augment": Compose([Flip(), Rot90()]),
        "seed": 4,
        "epochs": 4,
    }
    want = list(BatchLoader(path, **kwargs))  # all held: nothing can be reused
    held, addresses = {}, []
    for k, batch in enumerate(BatchLoader(path, **kwargs)):
        addresses.append(batch.images.__array_interface__["data"][0])
        assert np.array_equal(batch.images, want[k].images)
        if k % 4 == 0:
            held[k] = ("images", batch.images[1:])  # a view keeps its base
        elif k % 4 == 1:
            held[k] = ("masks", memoryview(batch.masks))  # so does a memoryview
        elif k % 4 == 2:
            held[k] = ("batch", batch)
    for k, (what, obj) in held.items():
        if what == "images":
            assert np.array_equal(obj, want[k].images[1:])
        elif what == "masks":
            assert np.array_equal(np.asarray(obj), want[k].masks)
        else:
            assert np.array_equal(obj.images, want[k].images)
            assert np.array_equal(obj.masks, want[k].masks)
    assert len(set(addresses)) < len(addresses)  # dropped batches' arrays were refilled


# -- issue 13: int patch sizes, drop_last, new transforms across processes --------------


def test_int_patch_size_is_a_cube_or_a_square(lung_file, slice_file):
    path, _ = lung_file
    loader = BatchLoader(path, patch_size=24, batch_size=2, epochs=1)
    assert loader.patch_size == (24, 24, 24)
    assert next(iter(loader)).images.shape == (2, 1, 24, 24, 24)
    square = BatchLoader(slice_file, patch_size=64, batch_size=2, epochs=1)
    assert square.patch_size == (64, 64)
    assert next(iter(square)).images.shape == (2, 1, 64, 64)


def test_drop_last_with_fewer_cases_than_the_batch_raises(lung_file):
    path, _ = lung_file
    with pytest.raises(ValueError, match="drop every batch"):
        BatchLoader(path, patch_size=16, batch_size=8, drop_last=True, epochs=None)
    with pytest.raises(ValueError, match="drop every batch"):
        BatchLoader(path, patch_size=16, batch_size=3, drop_last=True, split="val")
    ok = BatchLoader(path, patch_size=16, batch_size=5, drop_last=True, epochs=None)
    assert len(next(iter(ok))) == 5


def test_preset_batches_replay_and_agree_across_processes(lung_file):
    from dsbprep.augment import nnunet_preset

    path, _ = lung_file
    kwargs = {"patch_size": 24, "batch_size": 5, "augment": nnunet_preset(), "seed": 4}
    loader = BatchLoader(path, epochs=3, **kwargs)
    batches = list(loader)
    again = list(BatchLoader(path, epochs=3, **kwargs))
    names = set()
    for a, b in zip(batches, again, strict=True):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
        replayed = loader.replay(a)
        assert np.array_equal(replayed.images, a.images)
        assert np.array_equal(replayed.masks, a.masks)
        for params in a.params:
            names |= {"rotate"} if params[0]["degrees"] != 0 else set()
            names |= {"scale"} if params[1]["zoom"][0] != 1 else set()
    assert {"rotate", "scale"} <= names  # resampled draws were among them
    keys = [(e, int(i)) for e in range(3) for i in loader.indices]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(_worker_samples, [(loader, keys[0::2]), (loader, keys[1::2])])
    got = dict(zip(keys[0::2] + keys[1::2], results[0] + results[1], strict=True))
    for b in batches:
        for i, image, mask in zip(b.indices, b.images, b.masks, strict=True):
            assert np.array_equal(got[(b.epoch, int(i))][0], image[0])
            assert np.array_equal(got[(b.epoch, int(i))][1], mask[0])


def _thread_count(loader):
    return loader.thread_count()


def test_threads_make_the_same_batches(lung_file):
    """Patches made by 1, 2 or 3 threads of one process are the same batches (nnU-Net set)."""
    from dsbprep.augment import nnunet_preset

    path, _ = lung_file
    kwargs = {"patch_size": 24, "batch_size": 5, "augment": nnunet_preset(), "seed": 9, "epochs": 3}
    one = BatchLoader(path, threads=1, **kwargs)
    want = list(one)
    assert one._threads.executor is None  # one thread: no pool
    for threads in (2, 3):
        loader = BatchLoader(path, threads=threads, **kwargs)
        got = list(loader)
        assert loader._threads.executor is not None and loader.thread_count() == threads
        for a, b in zip(want, got, strict=True):
            assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
            assert a.params == b.params and all(
                np.array_equal(x, y) for x, y in zip(a.boxes, b.boxes, strict=True)
            )
        loader.close()
        assert loader._threads.executor is None


def test_automatic_threads_one_per_core_here_one_in_workers(lung_file):
    """Auto: one thread per core where patches are computed, in the process that made the
    loader; one for flips/rot90 only (a read and a copy) and in worker processes."""
    path, _ = lung_file
    loader = BatchLoader(path, patch_size=24, augment=Compose([Flip(), Rotate(max_degrees=10)]))
    assert loader.thread_count() == BatchLoader.default_threads() == max(
        1, min(MAX_AUTO_THREADS, os.cpu_count() or 1)
    )
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.map(_thread_count, [loader]) == [1]
    assert BatchLoader(path, patch_size=24, augment=Compose([Flip(), Rot90()])).thread_count() == 1
    assert BatchLoader(path, patch_size=24).thread_count() == 1
    assert BatchLoader(path, patch_size=24, threads=3).thread_count() == 3
    with pytest.raises(ValueError, match="threads"):
        BatchLoader(path, patch_size=24, threads=-1)
