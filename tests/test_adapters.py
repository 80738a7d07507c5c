"""PyTorch and Keras adapters: real DataLoaders with 2 workers, sharding, a few training steps.

Needs the extras: ``pip install torch==2.13.0 'keras>=3'`` (``make test`` installs them).
"""

from __future__ import annotations

import gc
import itertools
import os
import pickle

# Keras picks its backend at first import: torch, so TensorFlow is not needed.
os.environ["KERAS_BACKEND"] = "torch"

import numpy as np
import pytest

from dsbprep.augment import Compose, Flip, Rot90
from dsbprep.loader import BatchLoader
from dsbprep.store import CaseData, DatasetWriter

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
from torch.utils.data import DataLoader  # noqa: E402

from dsbprep.adapters.torch import EpochSampler, PatchDataset, PatchStream  # noqa: E402

PAD = 170
PATCH = (16, 32, 32)


@pytest.fixture(scope="module")
def volume_file(tmp_path_factory):
    """Six small lung-like uint8 volumes with a left (1) / right (2) lung mask."""
    path = tmp_path_factory.mktemp("adapters") / "vol.h5"
    rng = np.random.default_rng(0)
    with DatasetWriter(path, chunks=(16, 32, 32), compression="blosc-lz4", pad_value=PAD) as w:
        for k in range(6):
            shape = (40 + 4 * k, 64, 72)
            z, y, x = np.ogrid[: shape[0], :64, :72]
            mask = np.zeros(shape, np.uint8)
            mask[
                ((y - 32) / 22) ** 2 + ((x - 22) / 12) ** 2 + ((z - shape[0] / 2) / 16) ** 2 < 1
            ] = 2
            mask[
                ((y - 32) / 22) ** 2 + ((x - 50) / 12) ** 2 + ((z - shape[0] / 2) / 16) ** 2 < 1
            ] = 1
            image = np.where(mask > 0, 40, 140) + rng.normal(0, 5, shape)
            w.append(CaseData(f"p{k}", np.clip(image, 0, 255).astype(np.uint8), mask))
    return path


def make_loader(path, **kwargs):
    kwargs = {
        "patch_size": PATCH,
        "batch_size": 4,
        "augment": Compose([Flip(), Rot90()]),
        "seed": 3,
        **kwargs,
    }
    return BatchLoader(path, **kwargs)


def collect(dl):
    return [(b["index"].tolist(), b["image"].numpy().copy(), b["mask"].numpy().copy()) for b in dl]


def same(a, b):
    assert len(a) == len(b)
    for (ia, xa, ma), (ib, xb, mb) in zip(a, b, strict=True):
        assert ia == ib and np.array_equal(xa, xb) and np.array_equal(ma, mb)


def test_map_dataset_with_two_workers_is_reproducible(volume_file):
    loader = make_loader(volume_file)
    loader.sample(0, 0)  # the parent opens the file before the workers fork
    ds = PatchDataset(loader)
    runs = []
    for workers in (2, 2, 0):
        sampler = EpochSampler(ds)
        out = []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            out += collect(DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers))
        runs.append(out)
    same(runs[0], runs[1])
    same(runs[0], runs[2])
    # The DataLoader's batches are the BatchLoader's own batches.
    mine = [(b.indices.tolist(), b.images, b.masks) for b in make_loader(volume_file, epochs=2)]
    same(runs[0], mine)
    assert runs[0][0][1].shape == (4, 1, *PATCH) and runs[0][0][1].dtype == np.float32
    assert ds[(1, 2)]["epoch"] == 1 and ds[0]["image"].shape == (1, *PATCH)


def test_epoch_sampler_shards_by_rank(volume_file):
    loader = make_loader(volume_file)
    shards = [list(EpochSampler(loader, rank=r, world_size=4, epoch=5)) for r in range(4)]
    assert [len(s) for s in shards] == [2, 2, 2, 2]  # 6 cases padded to 8
    flat = [i for s in shards for _, i in s]
    assert set(flat) == set(range(6)) and all(e == 5 for s in shards for e, _ in s)
    order = loader.epoch_batches(5)
    assert [i for _, i in shards[0]] == [int(v) for v in np.concatenate(order)[[0, 4]]]
    dropped = [list(EpochSampler(loader, rank=r, world_size=4, drop_last=True)) for r in range(4)]
    assert [len(s) for s in dropped] == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(loader, rank=2, world_size=2)


def test_iterable_stream_equals_the_loader_for_any_worker_count(volume_file):
    loader = make_loader(volume_file, epochs=3)
    want = [(b.indices.tolist(), b.images, b.masks) for b in loader]
    for workers in (0, 2):
        got = collect(DataLoader(PatchStream(loader), batch_size=None, num_workers=workers))
        same(got, want)
    # Two ranks split the stream between them, batch by batch.
    ranks = [
        collect(
            DataLoader(PatchStream(loader, rank=r, world_size=2), batch_size=None, num_workers=2)
        )
        for r in range(2)
    ]
    same(ranks[0], want[0::2])
    same(ranks[1], want[1::2])


def _np(x):
    return x.numpy().copy() if isinstance(x, torch.Tensor) else np.array(x)


def full(batches):
    """Everything a stream yields per batch, copied out (tensors -> numpy)."""
    return [
        (
            int(b["epoch"]),
            int(b["number"]),
            b["index"].tolist(),
            b["origin"].numpy().copy(),
            b["image"].numpy().copy(),
            b["mask"].numpy().copy(),
            b["params"],
            [_np(x) for x in b["boxes"]],
        )
        for b in batches
    ]


def from_loader(batches):
    return [
        (b.epoch, b.number, b.indices.tolist(), b.origins, b.images, b.masks, b.params, b.boxes)
        for b in batches
    ]


def same_full(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g[:3] == w[:3] and g[6] == w[6]
        for x, y in zip(g[3:6], w[3:6], strict=True):
            assert x.dtype == y.dtype and np.array_equal(x, y)
        for x, y in zip(g[7], w[7], strict=True):
            np.testing.assert_array_equal(x, y)


def in_ring(stream, tensor):
    """Whether ``tensor`` is a view of one of the stream's shared slots (no copy)."""
    images = stream.ring.images
    start = images.data_ptr()
    return start <= tensor.data_ptr() < start + images.numel() * images.element_size()


def slot_states(stream):
    return stream.ring.header[:, 0].tolist()


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_stream_equals_the_loader_with_0_1_2_workers(volume_file, context):
    """Every field of every batch, with 0, 1 and 2 workers, fork and spawn, in two runs."""
    loader = make_loader(volume_file, epochs=3, dtype="image")
    loader.sample(0, 0)  # an open handle in the parent must be neither used nor pickled
    want = from_loader(make_loader(volume_file, epochs=3, dtype="image"))
    counts = (0, 1, 2) if context == "fork" else (2,)
    for workers in counts:
        stream = PatchStream(loader)
        dl = DataLoader(
            stream,
            batch_size=None,
            num_workers=workers,
            multiprocessing_context=context if workers else None,
        )
        for _ in range(2):  # a second run through the same stream and slots
            got = list(dl)
            same_full(full(got), want)
            if workers:  # handed over as views of the shared slots, not copies
                assert sum(in_ring(stream, b["image"]) for b in got) >= len(got) // 2
            del got
        gc.collect()
        if workers:
            assert set(slot_states(stream)) == {0}  # every slot free again


def release_due(held, step, got):
    """Check the batches due for release at ``step`` against their arrival snapshots, drop them."""
    for due, k, batch in held:
        if due <= step:
            same_full(full([batch]), [got[k]])  # unchanged while it was held
    return [h for h in held if h[0] > step]


def test_held_batches_are_never_overwritten(volume_file):
    """Keep batches for a random number of steps while the ring wraps many times."""
    loader = make_loader(volume_file, epochs=6, batch_size=2)  # 18 batches
    want = from_loader(make_loader(volume_file, epochs=6, batch_size=2))
    stream = PatchStream(loader, slots=6)  # 3 per worker: it wraps every 3 batches
    dl = DataLoader(stream, batch_size=None, num_workers=2, prefetch_factor=2)
    rng = np.random.default_rng(0)
    held, got, views = [], [], 0
    for k, batch in enumerate(dl):
        got.append(full([batch])[0])  # a snapshot taken on arrival
        views += in_ring(stream, batch["image"])
        held.append((k + int(rng.integers(0, 5)), k, batch))
        del batch
        held = release_due(held, k, got)
    same_full(got, want)
    for _, k, batch in held:
        same_full(full([batch]), [got[k]])
    assert views >= 6  # views were handed out, and reused slots did not corrupt them
    del held, batch
    assert set(slot_states(stream)) == {0}  # released batches gave their slots back
    # Holding every batch: the main process hands out copies once a worker's slots run
    # low, so nothing waits and nothing is overwritten.
    everything = list(dl)
    same_full(full(everything), want)
    assert 0 < sum(in_ring(stream, b["image"]) for b in everything) < len(everything)


def test_abandoned_and_concurrent_iterations(volume_file):
    loader = make_loader(volume_file, epochs=4)
    want = full_want = from_loader(make_loader(volume_file, epochs=4))
    stream = PatchStream(loader, slots=4, slot_wait_s=0.2)  # 2 slots per worker
    dl = DataLoader(stream, batch_size=None, num_workers=2)
    it = iter(dl)
    first = full(itertools.islice(it, 3))
    same_full(first, want[:3])
    del it  # workers shut down with batches still in their slots
    gc.collect()
    assert 2 in slot_states(stream)  # written, never read: reclaimed by the next workers
    again = full(dl)  # each batch released before the next arrives
    same_full(again, full_want)
    gc.collect()
    assert set(slot_states(stream)) == {0}  # the stale slots were taken back
    # Two live iterators over one stream: slots are claimed under a lock; a worker that
    # finds none free sends its batch in fresh shared memory. Both streams stay exact.
    a, b = iter(dl), iter(dl)
    got_a, got_b = [], []
    for x, y in zip(a, b, strict=True):
        got_a += full([x])
        got_b += full([y])
    same_full(got_a, want)
    same_full(got_b, want)


def test_a_plainly_pickled_stream_is_detected(volume_file):
    """A copy of the slots (plain pickle) cannot hand a stale slot to the main process."""
    stream = PatchStream(make_loader(volume_file), slots=2)
    clone = pickle.loads(pickle.dumps(stream))
    idx = stream.loader.epoch_batches(0)[0]
    record = clone._worker_batch(idx, 0, 0, 0, 1)  # fills the clone's private copy
    with pytest.raises(RuntimeError, match="does not hold the batch"):
        pickle.loads(pickle.dumps(record))
    with pytest.raises(ValueError, match="slots"):
        PatchStream(make_loader(volume_file), slots=-1)


def test_stream_without_slots_uses_fresh_shared_memory(volume_file):
    loader = make_loader(volume_file, epochs=2)
    stream = PatchStream(loader, slots=0)
    assert stream.ring is None
    got = full(DataLoader(stream, batch_size=None, num_workers=2))
    same_full(got, from_loader(make_loader(volume_file, epochs=2)))


def test_infinite_stream_with_spawned_workers(volume_file):
    loader = make_loader(volume_file, epochs=None)
    loader.sample(0, 0)  # an open handle in the parent must not be pickled
    dl = DataLoader(
        PatchStream(loader), batch_size=None, num_workers=2, multiprocessing_context="spawn"
    )
    got = [(b["epoch"], b["index"].tolist()) for b in itertools.islice(iter(dl), 7)]
    want = [(b.epoch, b.indices.tolist()) for b in itertools.islice(iter(loader), 7)]
    assert got == want and got[-1][0] == 3  # 2 batches per epoch: the 7th is in epoch 3


def test_torch_training_loop_runs(volume_file):
    torch.manual_seed(0)
    loader = make_loader(volume_file, epochs=None)
    model = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 1, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    before = [p.detach().clone() for p in model.parameters()]
    dl = DataLoader(PatchStream(loader), batch_size=None, num_workers=2)

    def loss_of(batch):
        x = batch["image"] / 255.0
        y = (batch["mask"] > 0).float()  # lung voxels are the dark ones: easy to learn
        return torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)

    batches = iter(dl)
    first = next(batches)
    with torch.no_grad():
        start = float(loss_of(first))
    for batch in itertools.chain([first], itertools.islice(batches, 9)):
        loss = loss_of(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = float(loss_of(first))
    assert np.isfinite(end) and end < 0.8 * start
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_keras_fit_one_epoch_with_worker_processes(volume_file):
    keras = pytest.importorskip("keras", reason="the keras extra is not installed")
    from dsbprep.adapters.keras import KerasPatchDataset

    assert keras.backend.backend() == "torch"
    loader = make_loader(volume_file, channels_last=True, batch_size=3)
    data = KerasPatchDataset(loader, workers=2, use_multiprocessing=True, binary=True)
    assert len(data) == 2
    x, y = data[0]
    assert x.shape == (3, *PATCH, 1) and y.dtype == np.float32 and set(np.unique(y)) == {0.0, 1.0}
    threads = KerasPatchDataset(
        make_loader(volume_file, channels_last=True, batch_size=3), workers=2, binary=True
    )
    assert np.array_equal(threads[1][0], data[1][0])
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((*PATCH, 1)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv3D(2, 3, padding="same", activation="relu"),
            keras.layers.Conv3D(1, 1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")
    history = model.fit(data, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(float(history.history["loss"][0]))
    # on_epoch_end moved on to fresh orders and patches (Keras also calls it once after
    # building the model from a first batch, so the count may exceed the epochs run).
    assert data.epoch >= 1
    with pytest.raises(ValueError, match="channel-last"):
        KerasPatchDataset(make_loader(volume_file))
