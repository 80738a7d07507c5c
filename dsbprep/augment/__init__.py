"""Random augmentation of patches: draw parameters, then apply them deterministically.

Every random transform has two halves (as in TorchIO): ``draw(rng)`` returns a
small JSON-serialisable ``dict`` of parameters, and applying them is a pure function
of the inputs. One draw is applied to the image, the mask and the boxes together (as
MONAI's dictionary transforms do), so they stay aligned. :class:`Compose` records the
parameters of every sample; feeding them back to :meth:`Compose.apply` replays the
sample exactly.

* Spatial (:mod:`~dsbprep.augment.spatial`): :class:`Flip`, :class:`Rot90`,
  :class:`Rotate` (in-plane, optionally about all three axes), :class:`Scale`. Their
  matrices are multiplied and each patch is resampled once
  (:mod:`~dsbprep.augment.resample`): image linear, mask nearest, boxes through the
  same matrix.
* Intensity (:mod:`~dsbprep.augment.intensity`, image only, float32, after the
  spatial step): :class:`Brightness`, :class:`Contrast`, :class:`Gamma`,
  :class:`GaussianNoise`, :class:`GaussianBlur`, :class:`LowResolution`.
* :func:`from_config` reads ``[augmentation]``; :func:`nnunet_preset` is nnU-Net v2's
  default 3-D set (``preset = nnunet``).

Arrays are spatial only, ``(z, y, x)`` or ``(y, x)`` (no channel axis). Axes are
named ``"z"``, ``"y"``, ``"x"`` and addressed from the end (x is always the last
axis), so one transform serves 3-D patches and 2-D slices; a z flip of a 2-D
slice is a no-op. "In-plane" means the (y, x) plane.

Boxes are ``(n, len(BOX_COLUMNS))`` float arrays in the patch's voxel frame with the columns of
:data:`dsbprep.store.BOX_COLUMNS` (z, y, x centre, z, y, x size, diameter, readers, axial
diameter).
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

from ._base import AXES, IntensityTransform, SpatialTransform, Transform
from .compose import Augmented, Compose
from .intensity import Brightness, Contrast, Gamma, GaussianBlur, GaussianNoise, LowResolution
from .presets import PRESETS, from_config, nnunet_preset
from .spatial import Flip, Rot90, Rotate, Scale

__all__ = [
    "AXES",
    "Augmented",
    "Brightness",
    "Compose",
    "Contrast",
    "Flip",
    "Gamma",
    "GaussianBlur",
    "GaussianNoise",
    "IntensityTransform",
    "LowResolution",
    "PRESETS",
    "Rot90",
    "Rotate",
    "Scale",
    "SpatialTransform",
    "Transform",
    "from_config",
    "nnunet_preset",
]
