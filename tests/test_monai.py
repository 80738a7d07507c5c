"""The PyTorch stream's dict batches with MONAI transforms and losses (docs/LOADER.md, MONAI)."""

from __future__ import annotations

import numpy as np
import pytest

monai = pytest.importorskip("monai", reason="MONAI is in the test extras; pip install monai")
torch = pytest.importorskip("torch")

from monai.losses import DiceLoss  # noqa: E402
from monai.networks.nets import UNet  # noqa: E402
from monai.transforms import ScaleIntensityRanged  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from dsbprep.adapters.torch import PatchStream  # noqa: E402
from dsbprep.augment import Compose, Flip, Rot90, Rotate  # noqa: E402
from dsbprep.loader import BatchLoader  # noqa: E402
from dsbprep.store import CaseData, DatasetWriter  # noqa: E402


@pytest.fixture(scope="module")
def ball_file(tmp_path_factory):
    """Four uint8 volumes, each with a bright ball labelled 1 in the mask."""
    path = tmp_path_factory.mktemp("monai") / "balls.h5"
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:40, :48, :48]
    with DatasetWriter(path, chunks=(16, 32, 32), compression="blosc-lz4", pad_value=0) as w:
        for k in range(4):
            c = rng.integers(16, 32, 3)
            ball = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < 12**2
            image = np.clip(rng.normal(60, 10, ball.shape) + 120 * ball, 0, 255).astype(np.uint8)
            w.append(CaseData(f"ball{k}", image, ball.astype(np.uint8)))
    return path


def test_stream_batches_train_a_monai_unet_with_dice_loss(ball_file):
    loader = BatchLoader(
        ball_file,
        patch_size=32,
        batch_size=2,
        augment=Compose([Flip(), Rot90(), Rotate(max_degrees=15, p=1.0)]),
        seed=0,
        epochs=3,
        dtype="image",  # uint8 batches; MONAI's transform scales them to [0, 1]
    )
    scale = ScaleIntensityRanged(keys="image", a_min=0, a_max=255, b_min=0.0, b_max=1.0)
    model = UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(4, 8), strides=(2,))
    loss_fn = DiceLoss(sigmoid=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for batch in DataLoader(PatchStream(loader), batch_size=None, num_workers=2):
        batch = scale(batch)  # a MONAI dictionary transform on the whole batch dict
        image, target = batch["image"].float(), (batch["mask"] > 0).float()
        assert image.shape == (2, 1, 32, 32, 32) and float(image.max()) <= 1.0
        loss = loss_fn(model(image), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert len(losses) == 3 * loader.batches_per_epoch
    assert all(0.0 <= v <= 1.0 for v in losses)
