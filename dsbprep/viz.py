"""Drawing stored cases and patches: one set of functions for every figure dsbprep makes.

The build's ``--print_random_image`` (:func:`save_case_figure`), the loader's
``--print_random_image`` (:func:`save_patches_figure`) and the QA report
(:func:`save_case_montage`, :func:`save_slices_figure`, ``python -m dsbprep.report``)
all draw through :func:`draw_slice`: a grey image, each mask label as a faint fill
**and a contour line** in its colour (green = label 1 = left lung, orange = label 2 =
right lung), and nodule boxes in red. A second mask of the case (the QA report's grt123
outline of a case built with ``method = robust``) is drawn as dashed cyan contours under
the mask's, so it shows where the two differ.

Display orientation
-------------------
Slices are shown in stored array order, never flipped: an axial slice has the x index
increasing to the right and the y index increasing downwards. For a standard axial
scan (``direction`` = identity: x index -> patient left, y index -> posterior) that is
the usual radiological display: the patient's left lung appears on the image's
**right**, anterior at the top. Coronal and sagittal views put z (superior) upwards.
:func:`view_letters` computes the anatomical direction of each image edge from the
case's ``direction``, and the figures print those letters on the edges of every
3-D view, so a scan stored in another orientation is still read correctly.

matplotlib is imported inside the functions, with the non-interactive Agg backend,
so importing dsbprep never needs a display.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .store import as_boxes, empty_boxes

__all__ = [
    "BOX_COLOUR",
    "COMPARE_COLOUR",
    "LABEL_COLOURS",
    "LUNG_LABEL_NAMES",
    "VIEWS",
    "display_window",
    "draw_slice",
    "montage_slices",
    "orientation_note",
    "overlay_rgb",
    "save_case_figure",
    "save_case_montage",
    "save_patches_figure",
    "save_slices_figure",
    "view_letters",
    "view_plane",
]

#: RGB colour of each mask label (1 = left lung, 2 = right lung; other sources: label 1, 2, ...).
LABEL_COLOURS = {1: (0.1, 0.8, 0.2), 2: (0.95, 0.55, 0.1), 3: (0.2, 0.5, 1.0), 4: (0.9, 0.2, 0.8)}
#: Colour of labels beyond ``LABEL_COLOURS``.
OTHER_LABEL_COLOUR = (1.0, 1.0, 0.0)
#: Names of the labels of lung files (``docs/FORMAT.md``).
LUNG_LABEL_NAMES = {1: "left lung", 2: "right lung"}
#: Edge colour of nodule boxes.
BOX_COLOUR = (0.95, 0.1, 0.1)
#: Opacity of the filled overlay of :func:`overlay_rgb` (fill only, no contour).
OVERLAY_ALPHA = 0.35
#: Opacity of the faint fill drawn under each label's contour by :func:`draw_slice`.
FILL_ALPHA = 0.18
#: Line widths (points) of label contours and box edges.
CONTOUR_WIDTH = 1.1
BOX_WIDTH = 1.3
#: Contours of a second mask (``compare``): cyan, a colour no label, box or letter uses,
#: dashed and thinner, drawn under the mask's contours (hidden where the two coincide).
COMPARE_COLOUR = (0.0, 0.85, 1.0)
COMPARE_WIDTH = 1.0
COMPARE_DASHES = (0, (2.0, 1.5))
#: Grey window of a display: these percentiles of the image (robust to a few outliers).
DISPLAY_PERCENTILES = (0.5, 99.5)
#: Longest tile title of a slice grid (characters): a 2.4-inch tile at font size 8.
_TITLE_CHARS = 30
#: At most this many voxels are read to compute a display window (a strided subsample).
_WINDOW_SAMPLE = 2_000_000

#: Index axis shown -> (name, (row axis, column axis), matplotlib origin). Coronal and
#: sagittal views put z (superior for an axial scan) at the top.
VIEWS = {
    0: ("axial", (1, 2), "upper"),
    1: ("coronal", (0, 2), "lower"),
    2: ("sagittal", (0, 1), "lower"),
}
#: Anatomical letter of the positive and negative world (z, y, x) = (S, P, L) directions.
_PLUS_LETTER = ("S", "P", "L")
_MINUS_LETTER = ("I", "A", "R")


def _plt():
    """pyplot, on the non-interactive Agg backend unless pyplot was already set up.

    A notebook (inline backend) or an application that imported pyplot keeps its backend:
    figures are only saved to files here, never shown.
    """
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def display_window(
    image: np.ndarray, percentiles: tuple[float, float] = DISPLAY_PERCENTILES
) -> tuple[float, float]:
    """Grey levels ``(lo, hi)`` shown as black and white: percentiles of ``image``.

    Parameters
    ----------
    image : ndarray
        Any shape; large arrays are subsampled (strided) first.
    percentiles : (float, float)
        Lower and upper percentile.

    Returns
    -------
    (float, float)
        ``hi > lo`` always (a constant image gets ``(v, v + 1)``).

    Examples
    --------
    >>> display_window(np.arange(101), (0, 100))
    (0.0, 100.0)
    """
    image = np.asarray(image)
    if image.size == 0:
        return 0.0, 1.0
    step = max(1, int(np.ceil((image.size / _WINDOW_SAMPLE) ** (1 / max(image.ndim, 1)))))
    sample = image[(slice(None, None, step),) * image.ndim]
    lo, hi = (float(v) for v in np.percentile(sample, percentiles))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _to_unit(image: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    lo, hi = display_window(image) if window is None else window
    return np.clip((image.astype(np.float32) - lo) / max(float(hi - lo), 1e-6), 0, 1)


def _colour(label: int, colours: Mapping[int, tuple] | None = None) -> tuple[float, float, float]:
    return tuple((colours or LABEL_COLOURS).get(int(label), OTHER_LABEL_COLOUR))


def overlay_rgb(
    image: np.ndarray,
    mask: np.ndarray,
    alpha: float = OVERLAY_ALPHA,
    *,
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """Grey image (2-D) with the labels of ``mask`` blended in colour.

    Parameters
    ----------
    image, mask : ndarray (y, x)
    alpha : float
        Opacity of the label colours.
    window : (lo, hi), optional
        Grey levels shown black and white (default :func:`display_window` of ``image``).

    Returns
    -------
    ndarray (y, x, 3) float in [0, 1]

    Examples
    --------
    >>> rgb = overlay_rgb(np.zeros((2, 2)), np.array([[0, 1], [2, 0]]), alpha=1.0)
    >>> bool(np.allclose(rgb[0, 1], LABEL_COLOURS[1])), rgb[0, 0].tolist()
    (True, [0.0, 0.0, 0.0])
    """
    grey = _to_unit(np.asarray(image), window)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    mask = np.asarray(mask)
    for label in np.unique(mask[mask > 0]):
        colour = np.asarray(_colour(label))
        sel = mask == label
        rgb[sel] = (1 - alpha) * rgb[sel] + alpha * colour
    return rgb


def view_plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2-D plane of ``volume`` (z, y, x) at ``index`` along ``axis``, rows/columns as in ``VIEWS``.

    Examples
    --------
    >>> view_plane(np.arange(24).reshape(2, 3, 4), 1, 0).tolist()
    [[0, 1, 2, 3], [12, 13, 14, 15]]
    """
    return np.take(np.asarray(volume), int(index), axis=int(axis))


def view_letters(direction: np.ndarray | None, axis: int) -> dict[str, str]:
    """Anatomical direction of each edge of the view along ``axis``, as :func:`draw_slice` shows it.

    Parameters
    ----------
    direction : ndarray (3, 3), optional
        Column k = world (z, y, x) unit vector of index axis k (identity when None).
    axis : {0, 1, 2}
        The index axis the view cuts (0 axial, 1 coronal, 2 sagittal).

    Returns
    -------
    dict
        ``{"left", "right", "top", "bottom"}`` -> one of S/I, A/P, R/L (the world axis
        nearest to the image axis).

    Examples
    --------
    >>> view_letters(None, 0)  # standard axial: radiological display
    {'left': 'R', 'right': 'L', 'top': 'A', 'bottom': 'P'}
    >>> view_letters(None, 1)
    {'left': 'R', 'right': 'L', 'top': 'S', 'bottom': 'I'}
    """
    direction = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
    _, (row, col), origin = VIEWS[int(axis)]

    def letters(k: int) -> tuple[str, str]:
        world = direction[:, k]
        j = int(np.argmax(np.abs(world)))
        plus, minus = _PLUS_LETTER[j], _MINUS_LETTER[j]
        return (minus, plus) if world[j] > 0 else (plus, minus)  # (low index, high index)

    col_low, col_high = letters(col)
    row_low, row_high = letters(row)
    top, bottom = (row_low, row_high) if origin == "upper" else (row_high, row_low)
    return {"left": col_low, "right": col_high, "top": top, "bottom": bottom}


def orientation_note(direction: np.ndarray | None, ndim: int = 3) -> str:
    """One line for a figure legend: how the stored array is displayed, in anatomical terms.

    Examples
    --------
    >>> orientation_note(None)[:60]
    'Shown in stored array order (x index to the right): the pati'
    """
    if ndim == 2:
        return "Shown in stored array order (x index to the right, y index down); no flips."
    side = view_letters(direction, 0)["right"]
    if side == "L":
        convention = "the patient's LEFT is on the image's right (radiological convention)"
    elif side == "R":
        convention = "the patient's LEFT is on the image's left (neurological convention)"
    else:
        convention = f"the image's right is the patient's {side} side (not an axial x axis)"
    return (
        f"Shown in stored array order (x index to the right): {convention}; "
        "coronal/sagittal with superior up. Letters mark each edge's direction."
    )


def _contours(mask2d: np.ndarray) -> list[np.ndarray]:
    from skimage.measure import find_contours

    # pad so that a label touching the border still gets a closed outline
    padded = np.pad(mask2d.astype(np.uint8), 1)
    return [c - 1 for c in find_contours(padded, 0.5)]


def _boxes_in_view(ax: Any, boxes: np.ndarray, axis: int, index: int) -> int:
    """Draw the boxes cut by plane ``index`` of ``axis``; returns how many were drawn."""
    from matplotlib.patches import Rectangle

    _, (row, col), _ = VIEWS[axis]
    drawn = 0
    for box in as_boxes(boxes).astype(float):
        centre, size = box[:3], np.maximum(box[3:6], 1.0)
        if abs(index - centre[axis]) > size[axis] / 2:
            continue
        ax.add_patch(
            Rectangle(
                (centre[col] - size[col] / 2, centre[row] - size[row] / 2),
                size[col],
                size[row],
                fill=False,
                edgecolor=BOX_COLOUR,
                linewidth=BOX_WIDTH,
            )
        )
        drawn += 1
    return drawn


def _draw_view(ax: Any, image: np.ndarray, mask: np.ndarray, axis: int, index: int,
               compare: np.ndarray | None = None, **kwargs: Any) -> None:
    """Draw plane ``index`` along ``axis`` of a 3-D case, titled with the view's name."""
    draw_slice(ax, view_plane(image, axis, index), view_plane(mask, axis, index), axis=axis,
               index=index, title=f"{VIEWS[axis][0]} {'zyx'[axis]}={index}",
               compare=None if compare is None else view_plane(compare, axis, index), **kwargs)


def _outline(ax: Any, mask: np.ndarray, colour_of: Any, **style: Any) -> None:
    """Contours of each label of ``mask`` (a plane), coloured by ``colour_of(label)``."""
    for label in np.unique(mask[mask > 0]):
        for c in _contours(mask == label):
            ax.plot(c[:, 1], c[:, 0], color=colour_of(label), **style)


def draw_slice(
    ax: Any,
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    boxes: np.ndarray | None = None,
    axis: int = 0,
    index: int = 0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    direction: np.ndarray | None = None,
    window: tuple[float, float] | None = None,
    letters: bool = True,
    title: str | None = None,
    colours: Mapping[int, tuple] | None = None,
    fill_alpha: float = FILL_ALPHA,
    compare: np.ndarray | None = None,
) -> int:
    """Draw one plane: grey image, each label as faint fill plus contour, boxes; no axes.

    Parameters
    ----------
    ax : matplotlib Axes
    image, mask : ndarray (rows, cols)
        A plane from :func:`view_plane` (``mask`` optional, labels > 0 drawn).
    boxes : ndarray (n, 8), optional
        Boxes in the volume's voxel frame (``BOX_COLUMNS``); those cut by the plane are drawn.
    axis, index : int
        Which plane this is (index axis cut and position), for boxes, aspect and letters.
    spacing : 3 floats
        Voxel size (z, y, x) mm: the pixel aspect ratio follows it.
    direction : ndarray (3, 3), optional
        For the edge letters (see :func:`view_letters`).
    window : (lo, hi), optional
        Grey levels (default :func:`display_window` of ``image``).
    letters : bool
        Print the anatomical letters on the edges.
    title : str, optional
    colours : mapping, optional
        Label -> RGB (default ``LABEL_COLOURS``).
    fill_alpha : float
        Opacity of the fill under the contours (0 = contours only).
    compare : ndarray (rows, cols), optional
        A second mask of the plane (e.g. grt123's beside the stored robust one): each label's
        contour in ``COMPARE_COLOUR``, dashed, under the mask's contours.

    Returns
    -------
    int
        Number of boxes drawn.
    """
    _, (row, col), origin = VIEWS[int(axis)]
    window = display_window(image) if window is None else window
    aspect = float(spacing[row]) / float(spacing[col])
    if mask is not None and fill_alpha > 0:
        shown = overlay_rgb(image, mask, fill_alpha, window=window)
        ax.imshow(shown, origin=origin, aspect=aspect, interpolation="nearest")
    else:
        ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], origin=origin,
                  aspect=aspect, interpolation="nearest")
    if compare is not None:
        _outline(ax, compare, lambda _: COMPARE_COLOUR, linewidth=COMPARE_WIDTH,
                 linestyle=COMPARE_DASHES)
    if mask is not None:
        _outline(ax, mask, lambda label: _colour(label, colours), linewidth=CONTOUR_WIDTH)
    n = _boxes_in_view(ax, boxes, int(axis), int(index)) if boxes is not None and len(boxes) else 0
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim((image.shape[0] - 0.5, -0.5) if origin == "upper" else (-0.5, image.shape[0] - 0.5))
    if letters:
        _edge_letters(ax, view_letters(direction, int(axis)))
    if title:
        ax.set_title(title, fontsize=8, parse_math=False)
    ax.set_axis_off()
    return n


def _edge_letters(ax: Any, where: Mapping[str, str]) -> None:
    """Print the anatomical letters of :func:`view_letters` on the edges of ``ax``."""
    style = {
        "color": "yellow",
        "fontsize": 7,
        "fontweight": "bold",
        "transform": ax.transAxes,
        "bbox": {"facecolor": "black", "alpha": 0.6, "pad": 1.0, "linewidth": 0},
        "parse_math": False,
    }
    ax.text(0.01, 0.5, where["left"], ha="left", va="center", **style)
    ax.text(0.99, 0.5, where["right"], ha="right", va="center", **style)
    ax.text(0.5, 0.99, where["top"], ha="center", va="top", **style)
    ax.text(0.5, 0.01, where["bottom"], ha="center", va="bottom", **style)


def _legend(
    fig: Any, labels: Sequence[int], names: Mapping[int, str] | None, note: str, boxes: bool,
    compare: str | None = None,
) -> None:
    from matplotlib.lines import Line2D

    names = names or {}
    handles = [
        Line2D(
            [],
            [],
            color=_colour(k),
            linewidth=2,
            label=f"{k}: {names[int(k)]}" if int(k) in names else f"label {k}",
        )
        for k in labels
    ]
    if boxes:
        handles.append(Line2D([], [], color=BOX_COLOUR, linewidth=2, label="nodule box"))
    if compare:
        handles.append(Line2D([], [], color=COMPARE_COLOUR, linewidth=2, linestyle=COMPARE_DASHES,
                              label=f"{compare} (dashed, where it differs)"))
    if handles:
        legend = fig.legend(
            handles=handles,
            loc="lower left",
            bbox_to_anchor=(0.0, 0.018),
            ncol=len(handles),
            fontsize=8,
            frameon=False,
        )
        for text in legend.get_texts():  # label names come from the file's meta: plain text
            text.set_parse_math(False)
    fig.text(0.01, 0.004, note, ha="left", va="bottom", fontsize=7, parse_math=False)


def _short(text: str, limit: int = _TITLE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, keeping its end (where long UIDs differ)."""
    if len(text) <= limit:
        return text
    if text.startswith("! "):  # the report's mark of a flagged case stays in front
        return "! " + _short(text[2:], limit - 2)
    return "..." + text[-(limit - 3) :]


def _case_arrays(case: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # CaseRecord reads the file on every attribute access: read each array once
    return (
        np.asarray(case.image),
        np.asarray(case.mask),
        as_boxes(case.boxes).astype(float),
    )


def _label_names(case: Any) -> dict[int, str]:
    meta = getattr(case, "meta", None) or {}
    names = meta.get("labels") if isinstance(meta, dict) else None
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    return dict(LUNG_LABEL_NAMES) if meta.get("source", "lung") in ("lung", "nrrd") else {}


def _centre(
    mask: np.ndarray, boxes: np.ndarray, shape: tuple[int, ...], label: int | None = None
) -> np.ndarray:
    """Voxel to cut the orthogonal views through: the first box, else a label's centroid."""
    if len(boxes):
        centre = boxes[0, :3]
    else:
        sel = (mask == label) if label is not None and (mask == label).any() else mask > 0
        centre = np.argwhere(sel).mean(axis=0) if sel.any() else (np.array(shape) - 1) / 2
    return np.clip(np.round(centre).astype(int), 0, np.array(shape) - 1)


def montage_slices(mask: np.ndarray, boxes: np.ndarray | None = None, n: int = 12) -> list[int]:
    """Axial slice indices for a montage: ``n`` spread over the mask's z extent, nodules included.

    The slices are evenly spaced over the z range of the mask (the whole volume when the
    mask is empty); the slice nearest to each box centre (at most ``n // 2`` boxes) then
    replaces the nearest montage slice, so every nodule is shown.

    Examples
    --------
    >>> m = np.zeros((100, 4, 4), np.uint8); m[20:80] = 1
    >>> montage_slices(m, n=4)
    [27, 42, 57, 72]
    >>> montage_slices(m, np.array([[50, 2, 2, 5, 2, 2, 5, 1]]), n=4)
    [27, 42, 50, 72]
    """
    nz = mask.shape[0]
    n = max(1, min(int(n), nz))
    zs = np.flatnonzero(np.asarray(mask).reshape(nz, -1).any(axis=1))
    z0, z1 = (int(zs[0]), int(zs[-1])) if zs.size else (0, nz - 1)
    picks = [int(round(z0 + (z1 - z0) * (k + 0.5) / n)) for k in range(n)]
    if boxes is not None:
        for box in as_boxes(boxes).astype(float)[: n // 2]:
            z = int(np.clip(round(box[0]), 0, nz - 1))
            if z in picks:
                continue
            free = [i for i, p in enumerate(picks) if not _is_box_slice(p, boxes)]
            if not free:
                break
            nearest = min(free, key=lambda i: abs(picks[i] - z))
            picks[nearest] = z
    return sorted(picks)


def _is_box_slice(z: int, boxes: np.ndarray) -> bool:
    boxes = as_boxes(boxes).astype(float)
    return bool(np.any(np.abs(z - boxes[:, 0]) <= np.maximum(boxes[:, 3], 1) / 2))


@dataclass
class _CaseView:
    """A case's arrays read once, with what every case figure needs to draw them."""

    image: np.ndarray
    mask: np.ndarray
    boxes: np.ndarray
    spacing: tuple[float, ...]
    direction: np.ndarray | None
    window: tuple[float, float]
    compare: np.ndarray | None = None

    @classmethod
    def of(cls, case: Any) -> _CaseView:
        image, mask, boxes = _case_arrays(case)
        return cls(image, mask, boxes, tuple(case.spacing), getattr(case, "direction", None),
                   display_window(image))

    @property
    def labels(self) -> list[int]:
        return [int(v) for v in np.unique(self.mask[self.mask > 0])]

    def title(self, case: Any) -> str:
        return (f"{case.case_id}  shape {tuple(case.shape)}  spacing "
                f"{tuple(round(s, 3) for s in self.spacing)} mm")

    def draw_view(self, ax: Any, axis: int) -> None:
        """The plane along ``axis`` through the first box or the mask's centroid.

        The sagittal plane goes through label 1 (the left lung), which the centroid of
        both lungs would miss.
        """
        centre = _centre(self.mask, self.boxes, self.image.shape, label=1 if axis == 2 else None)
        _draw_view(ax, self.image, self.mask, axis, int(centre[axis]), compare=self.compare,
                   boxes=self.boxes, spacing=self.spacing, direction=self.direction,
                   window=self.window)


def _save(fig: Any, path: str | os.PathLike, dpi: int, rect: tuple[float, ...]) -> Path:
    """Lay out ``fig`` in ``rect`` (room left for the legend), write it as PNG, close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def save_case_figure(case: Any, path: str | os.PathLike, *, dpi: int = 90) -> Path:
    """Save a PNG of a stored case: axial, coronal and sagittal planes with contours and boxes.

    The build's ``--print_random_image`` calls this. For 3-D cases the planes go through
    the first nodule box if any, else through the centroid of the mask (the sagittal one
    through label 1, the left lung, which the centroid of both lungs would miss). 2-D
    cases show the image and the outlined mask.

    Parameters
    ----------
    case : CaseRecord or alike
        ``case_id``, ``image``, ``mask``, ``boxes``, ``spacing``, ``shape`` (``direction``
        and ``meta`` optional).
    path : path
        PNG to write (folders are created).
    dpi : int

    Returns
    -------
    Path
    """
    v = _CaseView.of(case)
    plt = _plt()
    if v.image.shape[0] == 1:
        fig, axes = plt.subplots(1, 2, figsize=(8, 4.6))
        draw_slice(axes[0], v.image[0], None, window=v.window, letters=False, spacing=v.spacing,
                   title=f"{case.case_id}: image")
        draw_slice(axes[1], v.image[0], v.mask[0], boxes=v.boxes, window=v.window, letters=False,
                   spacing=v.spacing, title="mask outlines")
        note = orientation_note(v.direction, 2)
    else:
        fig, axes = plt.subplots(1, 3, figsize=(13, 5.0))
        for ax, axis in zip(axes, (0, 1, 2), strict=True):
            v.draw_view(ax, axis)
        note = orientation_note(v.direction, 3)
        fig.suptitle(v.title(case), fontsize=10, parse_math=False)
    _legend(fig, v.labels, _label_names(case), note, bool(len(v.boxes)))
    return _save(fig, path, dpi, rect=(0, 0.08, 1, 1))


def save_case_montage(
    case: Any,
    path: str | os.PathLike,
    *,
    n_axial: int = 12,
    columns: int = 6,
    title: str | None = None,
    dpi: int = 72,
    compare: np.ndarray | None = None,
    compare_name: str = "grt123",
) -> Path:
    """Save the QA report's PNG of a 3-D case: an axial montage plus one coronal and one sagittal view.

    Parameters
    ----------
    case : CaseRecord or alike
        As for :func:`save_case_figure`.
    path : path
        PNG to write.
    n_axial : int
        Axial slices in the montage (:func:`montage_slices`: spread over the lungs, every
        nodule's centre slice included).
    columns : int
        Montage columns.
    title : str, optional
        Figure title (default: case id, shape and spacing).
    dpi : int
    compare : ndarray, optional
        A second mask of the case on its grid, outlined dashed in ``COMPARE_COLOUR`` under
        the mask's outlines (the report: grt123's mask of a case built robust).
    compare_name : str
        Its name in the legend.

    Returns
    -------
    Path
    """
    v = _CaseView.of(case)
    if compare is not None:
        v.compare = np.asarray(compare)
        if v.compare.shape != v.mask.shape:
            raise ValueError(f"compare mask {v.compare.shape} is not the case's {v.mask.shape}")
    zs = montage_slices(v.mask, v.boxes, n_axial)
    rows = -(-len(zs) // columns)
    fig = _plt().figure(figsize=(2.3 * columns, 2.3 * rows + 5.5))
    grid = fig.add_gridspec(rows + 1, columns, height_ratios=[1.0] * rows + [2.4])
    for k, z in enumerate(zs):
        ax = fig.add_subplot(grid[k // columns, k % columns])
        mark = " nodule" if len(v.boxes) and _is_box_slice(z, v.boxes) else ""
        draw_slice(ax, v.image[z], v.mask[z], boxes=v.boxes, axis=0, index=z, spacing=v.spacing,
                   direction=v.direction, window=v.window, title=f"axial z={z}{mark}",
                   compare=None if v.compare is None else v.compare[z])
    half = columns // 2
    v.draw_view(fig.add_subplot(grid[rows, slice(0, half)]), 1)
    v.draw_view(fig.add_subplot(grid[rows, slice(half, columns)]), 2)
    fig.suptitle(title or v.title(case), fontsize=10, parse_math=False)
    _legend(fig, v.labels, _label_names(case), orientation_note(v.direction, 3), bool(len(v.boxes)),
            compare=None if v.compare is None else compare_name)
    return _save(fig, path, dpi, rect=(0, 0.05, 1, 0.97))


def save_slices_figure(
    cases: Sequence[Any],
    path: str | os.PathLike,
    *,
    columns: int = 6,
    titles: Sequence[str] | None = None,
    dpi: int = 72,
) -> Path:
    """Save a grid of 2-D cases (one slice each) with their mask outlines and boxes.

    The QA report's view of 2-D files (contours, rle sources).

    Parameters
    ----------
    cases : sequence of CaseRecord or alike
        2-D cases (``image`` of shape (1, y, x)); a 3-D case shows its middle slice.
    path : path
        PNG to write.
    columns : int
        Tiles per row.
    titles : sequence of str, optional
        One title per tile (default: the case ids).
    dpi : int

    Returns
    -------
    Path
    """
    plt = _plt()
    if not cases:
        raise ValueError(f"{path}: no cases to draw")
    columns = max(1, min(int(columns), len(cases)))
    rows = -(-len(cases) // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(2.4 * columns, 2.5 * rows + 0.5), squeeze=False
    )
    labels: set[int] = set()
    names: dict[int, str] = {}
    any_boxes = False
    for k, ax in enumerate(axes.ravel()):
        if k >= len(cases):
            ax.set_axis_off()
            continue
        case = cases[k]
        image, mask, boxes = _case_arrays(case)
        z = image.shape[0] // 2
        labels |= {int(v) for v in np.unique(mask[mask > 0])}
        names.update(_label_names(case))
        any_boxes |= bool(len(boxes))
        draw_slice(
            ax,
            image[z],
            mask[z],
            boxes=boxes,
            axis=0,
            index=z,
            spacing=tuple(case.spacing),
            letters=False,
            title=_short(titles[k] if titles else str(case.case_id)),
        )
    _legend(fig, sorted(labels), names, orientation_note(None, 2), any_boxes)
    return _save(fig, path, dpi, rect=(0, 0.07, 1, 1))


#: At most this many recorded parameters per transform in a patch title.
_OP_KEYS = 2
#: At most this many lines of transforms under a patch.
_OP_LINES = 3


def _op_label(params: Mapping[str, Any]) -> str:
    """A short title for one transform's recorded parameters: ``rotate degrees=12.3``.

    Examples
    --------
    >>> _op_label({"name": "rotate", "degrees": 12.345, "seed": 7})
    'rotate degrees=12.3'
    >>> _op_label({"name": "flip", "axes": ["z", "x"]})
    "flip axes=['z', 'x']"
    """
    shown = []
    for key, value in params.items():
        if key in ("name", "seed") or value is None:
            continue
        if isinstance(value, float):
            value = f"{value:.3g}"
        elif isinstance(value, list | tuple) and value and all(isinstance(v, float) for v in value):
            value = "(" + ", ".join(f"{v:.3g}" for v in value) + ")"
        shown.append(f"{key}={value}")
    return " ".join([str(params.get("name", "?")), *shown[:_OP_KEYS]])


def _wrapped(text: str, width: int = 2 * _TITLE_CHARS, lines: int = _OP_LINES) -> str:
    """``text`` on at most ``lines`` lines of ``width`` characters (a patch title under a
    panel), the rest cut with "...".

    Examples
    --------
    >>> _wrapped("flip axes=['x'], rot90 k=1, rotate degrees=-13.3", width=20, lines=2)
    "flip axes=['x'],\\nrot90 k=1, rotate..."
    """
    import textwrap

    return "\n".join(textwrap.wrap(text, width, max_lines=lines, placeholder="..."))


def save_patches_figure(samples: Sequence[Any], path: str | os.PathLike, *, dpi: int = 80) -> Path:
    """Save augmented training patches: the image above, the outlined mask and boxes below.

    The loader's ``--print_random_image`` figure. 3-D patches show their middle axial slice.

    Parameters
    ----------
    samples : sequence of :class:`dsbprep.loader.Sample` or alike
        ``image``, ``mask`` ((z, y, x) or (y, x)), ``boxes`` (patch frame), ``case_id``,
        ``origin`` and ``params`` (the augmentation parameters, shown as the title).
    path : path
        PNG to write.
    dpi : int

    Returns
    -------
    Path
    """
    plt = _plt()
    if not samples:
        raise ValueError(f"{path}: no patches to draw")
    # height leaves room for up to _OP_LINES lines of transforms above each lower panel
    fig, axes = plt.subplots(2, len(samples), figsize=(4 * len(samples), 9.4), squeeze=False)
    labels: set[int] = set()
    for col, s in enumerate(samples):
        image, mask = np.asarray(s.image), np.asarray(s.mask)
        boxes = as_boxes(getattr(s, "boxes", empty_boxes())).astype(float)
        if image.ndim == 3:
            z = image.shape[0] // 2
            image, mask = image[z], mask[z]
        else:  # a 2-D patch: boxes are drawn on "slice 0" of a one-slice frame
            z = 0
            boxes = boxes.copy()
            boxes[:, 0] = 0
        window = display_window(image)
        labels |= {int(v) for v in np.unique(mask[mask > 0])}
        origin = tuple(int(v) for v in np.ravel(getattr(s, "origin", ())))
        draw_slice(
            axes[0, col], image, None, window=window, letters=False, title=f"{s.case_id} @ {origin}"
        )
        ops = ", ".join(_op_label(p) for p in getattr(s, "params", []) or [])
        draw_slice(
            axes[1, col],
            image,
            mask,
            boxes=boxes,
            axis=0,
            index=z,
            window=window,
            letters=False,
            title=_wrapped(ops) or "no augmentation",
        )
    _legend(
        fig,
        sorted(labels),
        None,
        "Patches after augmentation (flips/rotations change the orientation); middle axial slice.",
        False,
    )
    return _save(fig, path, dpi, rect=(0, 0.07, 1, 1))
