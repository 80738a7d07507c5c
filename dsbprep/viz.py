"""Drawing stored cases and patches (used by the build, the loader and the QA report).

matplotlib is imported inside the functions, with the non-interactive Agg backend,
so importing dsbprep never needs a display.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["overlay_rgb", "save_case_figure", "LABEL_COLOURS"]

#: RGB colour of each mask label (1 = left lung, 2 = right lung; other sources: label 1, 2, ...).
LABEL_COLOURS = {1: (0.1, 0.8, 0.2), 2: (0.95, 0.55, 0.1), 3: (0.2, 0.5, 1.0), 4: (0.9, 0.2, 0.8)}
#: Opacity of the mask overlay.
OVERLAY_ALPHA = 0.35


def _to_unit(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    lo, hi = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
    return np.clip((image - lo) / max(float(hi - lo), 1e-6), 0, 1)


def overlay_rgb(image: np.ndarray, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Grey image (2-D) with the labels of ``mask`` blended in colour -> (y, x, 3) float in [0, 1]."""
    grey = _to_unit(image)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for label in np.unique(mask[mask > 0]):
        colour = np.asarray(LABEL_COLOURS.get(int(label), (1.0, 1.0, 0.0)))
        sel = mask == label
        rgb[sel] = (1 - alpha) * rgb[sel] + alpha * colour
    return rgb


def _boxes_on_slice(ax: Any, boxes: np.ndarray, axis: int, index: int) -> None:
    from matplotlib.patches import Rectangle

    other = [a for a in range(3) if a != axis]
    for box in boxes:
        centre, size = box[:3], np.maximum(box[3:6], 1)
        if abs(index - centre[axis]) > size[axis] / 2:
            continue
        (r, c) = other
        ax.add_patch(Rectangle((centre[c] - size[c] / 2, centre[r] - size[r] / 2), size[c], size[r],
                               fill=False, edgecolor="red", linewidth=1.2))


def save_case_figure(case: Any, path: str | os.PathLike) -> Path:
    """Save a PNG of a stored case: axial, coronal and sagittal mid-planes with mask and boxes.

    For 3-D cases the axial slice goes through the first nodule box if any, else
    through the middle of the mask. 2-D cases show the image and the overlay.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, mask, boxes = case.image, case.mask, case.boxes
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spacing = case.spacing
    if image.shape[0] == 1:
        fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
        axes[0].imshow(image[0], cmap="gray")
        axes[0].set_title(f"{case.case_id}: image")
        axes[1].imshow(overlay_rgb(image[0], mask[0]))
        axes[1].set_title("mask overlay")
        _boxes_on_slice(axes[1], boxes, 0, 0)
    else:
        if len(boxes):
            centre = np.round(boxes[0, :3]).astype(int)
        elif mask.any():
            centre = np.round(np.argwhere(mask).mean(axis=0)).astype(int)
        else:
            centre = np.array(image.shape) // 2
        centre = np.clip(centre, 0, np.array(image.shape) - 1)
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
        views = [
            ("axial", 0, image[centre[0]], mask[centre[0]], spacing[1] / spacing[2]),
            ("coronal", 1, image[:, centre[1]], mask[:, centre[1]], spacing[0] / spacing[2]),
            ("sagittal", 2, image[:, :, centre[2]], mask[:, :, centre[2]], spacing[0] / spacing[1]),
        ]
        for ax, (name, axis, img, msk, aspect) in zip(axes, views, strict=True):
            ax.imshow(overlay_rgb(img, msk), aspect=aspect)
            _boxes_on_slice(ax, boxes, axis, centre[axis])
            ax.set_title(f"{name} {centre[axis]}")
        fig.suptitle(f"{case.case_id}  shape {case.shape}  spacing "
                     f"{tuple(round(s, 3) for s in spacing)} mm  (green = left, orange = right)")
    for ax in np.ravel(axes):
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
