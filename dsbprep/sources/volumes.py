"""Labelled volumes: image + label volume files -> 3-D (image, label mask) cases.

The ``volumes`` source reads the layout nnU-Net and the Medical Segmentation Decathlon
use::

    DIR/imagesTr/<case>_0000.nii.gz   the image (nnU-Net: channel 0000), or <case>.nii.gz (MSD)
    DIR/labelsTr/<case>.nii.gz        the label map on the same grid

(``[volumes]`` ``images_dir``, ``labels_dir`` and ``channel`` name the parts; any volume
format :func:`dsbprep.io.volume.read_volume` reads works, ``.mhd`` and ``.nrrd`` too).
One case per label file, id = its name without extension; an image without a label
(``imagesTs``-style) is skipped with a warning.

:class:`LabelledVolumeSource` is the code both this source and the ``nrrd`` source
(:mod:`dsbprep.sources.nrrd`, one folder per case) run per case: read image and label
(:func:`read_image_volume`; a DICOM series folder as image works too), put both on the
standard axes (:func:`dsbprep.io.volume.canonical_axes`), check that the label lies on
the image grid (:func:`dsbprep.io.volume.check_alignment`), map label values
(``label_bits`` then ``label_map``), optionally resample to ``target_spacing`` and export
PNG slices. The stored file is 3-D and labelled: the loader serves it with
``sampler="label"``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scipy import ndimage

from ..errors import DsbprepError, MaskSourceError
from ..io.dicom import MAX_VOXELS
from ..io.volume import (
    DIRECTION_TOLERANCE,
    ORIGIN_TOLERANCE_MM,
    SPACING_TOLERANCE_MM,
    Volume,
    canonical_axes,
    check_alignment,
    is_volume_file,
    read_volume,
    volume_case_id,
    with_data_files,
)
from ..store import CaseData
from . import SourceBase, Task, listing_fingerprint

__all__ = [
    "PNG_WINDOW",
    "parse_label_map",
    "map_labels",
    "resample_to_spacing",
    "export_png_slices",
    "read_image_volume",
    "discover_volume_pairs",
    "LabelledVolumeSource",
    "VolumesSource",
]

logger = logging.getLogger(__name__)

#: HU window of the exported PNG images: grt123's lung window, as :func:`window_to_uint8`.
PNG_WINDOW = (-1200.0, 600.0)


def parse_label_map(text: str) -> dict[int, tuple[int, ...]]:
    """Parse ``"1=9 10 11; 2=12 13 14"`` into ``{1: (9, 10, 11), 2: (12, 13, 14)}``.

    An empty string gives an empty map (keep values).

    Raises
    ------
    ValueError
        Malformed entries, output labels outside 1..255, or an input value mapped twice.

    Examples
    --------
    >>> parse_label_map("1=9 10 11; 2=12 13 14")
    {1: (9, 10, 11), 2: (12, 13, 14)}
    """
    out: dict[int, tuple[int, ...]] = {}
    seen: dict[int, int] = {}
    for entry in (e.strip() for e in str(text).split(";")):
        if not entry:
            continue
        key, sep, values = entry.partition("=")
        try:
            if not sep:
                raise ValueError
            target = int(key)
            sources = tuple(int(v) for v in values.replace(",", " ").split())
        except ValueError:
            raise ValueError(f"label_map entry {entry!r} must look like 'OUT=IN IN ...'") from None
        if not 1 <= target <= np.iinfo(np.uint8).max or not sources:
            raise ValueError(
                f"label_map entry {entry!r}: output label must be 1..255 with at least one input"
            )
        for v in sources:
            if v in seen:
                raise ValueError(
                    f"label_map: input value {v} mapped to both {seen[v]} and {target}"
                )
            seen[v] = target
        out[target] = out.get(target, ()) + sources
    return out


def map_labels(
    label: np.ndarray, label_map: dict[int, tuple[int, ...]], *, bits: int = 0, name: str = "label"
) -> np.ndarray:
    """Turn a label volume into a uint8 mask: ``value & bits`` (when bits), then ``label_map``.

    Parameters
    ----------
    label : ndarray of int
    label_map : dict
        Output label -> input values (after masking); empty keeps the values.
    bits : int
        Bit mask applied first (255 = CIP's ChestRegion byte); 0 = none.
    name : str
        Used in error messages (the file).

    Returns
    -------
    ndarray uint8, the shape of ``label``

    Raises
    ------
    MaskSourceError
        Non-integer labels, or (empty map) values outside 0..255.

    Examples
    --------
    >>> map_labels(np.array([0, 9, 521, 12, 5]), parse_label_map("1=9 10 11; 2=12 13 14"), bits=255).tolist()
    [0, 1, 1, 2, 0]
    """
    label = np.asarray(label)
    if not np.issubdtype(label.dtype, np.integer):
        if not np.array_equal(label, np.round(label)):
            raise MaskSourceError(f"{name}: label values must be integers (dtype {label.dtype})")
        label = label.astype(np.int64)
    values = label & bits if bits else label
    if not label_map:
        if values.size and (values.min() < 0 or values.max() > np.iinfo(np.uint8).max):
            raise MaskSourceError(
                f"{name}: label values {values.min()}..{values.max()} do not fit uint8; "
                "set label_map or label_bits"
            )
        return values.astype(np.uint8)
    uniq, inverse = np.unique(values, return_inverse=True)
    lut = np.zeros(uniq.size, np.uint8)
    for target, sources in label_map.items():
        lut[np.isin(uniq, sources)] = target
    return lut[inverse].reshape(label.shape)


def resample_to_spacing(
    array: np.ndarray, spacing: tuple[float, ...], target_spacing: tuple[float, ...], *, order: int
) -> np.ndarray:
    """Resample a (z, y, x) volume to ``target_spacing`` mm, keeping voxel [0, 0, 0] in place.

    Output voxel i samples input index ``i * target / spacing`` (edges clamped), so the
    origin and direction are unchanged; the output has ``round(n * spacing / target)``
    voxels per axis. ``order=0`` for label maps.

    Examples
    --------
    >>> resample_to_spacing(np.arange(4.0).reshape(1, 1, 4), (1, 1, 1.0), (1, 1, 2.0), order=1).tolist()
    [[[0.0, 2.0]]]
    """
    spacing = np.asarray(spacing, float)
    target = np.asarray(target_spacing, float)
    if np.any(target <= 0):
        raise ValueError(f"target_spacing must be positive, got {target.tolist()}")
    scale = target / spacing
    shape = tuple(
        int(n) for n in np.maximum(np.round(np.asarray(array.shape) * spacing / target), 1)
    )
    return ndimage.affine_transform(array, scale, output_shape=shape, order=order, mode="nearest")


def export_png_slices(
    image: np.ndarray,
    mask: np.ndarray,
    folder: str | os.PathLike,
    prefix: str,
    *,
    window: tuple[float, float] = PNG_WINDOW,
    skip_empty: bool = False,
) -> list[str]:
    """Write each axial slice as ``<prefix>_z<NNNN>_image.png`` / ``_mask.png`` in ``folder``.

    The image is windowed to uint8 (:func:`dsbprep.preprocess.window_to_uint8`); the mask
    PNG holds the label values themselves (0, 1, 2, ...).

    Parameters
    ----------
    image, mask : ndarray (z, y, x)
    folder : str or Path
        Created when absent.
    prefix : str
        File name prefix (the case id).
    window : tuple of 2 float
        (low, high) image values mapped to 0 and 255.
    skip_empty : bool
        Leave out slices whose mask is empty.

    Returns
    -------
    list of str
        The image PNG paths written (each has its ``_mask.png`` twin).
    """
    from PIL import Image  # pillow comes with matplotlib, a dsbprep dependency

    from ..preprocess import window_to_uint8

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    gray = window_to_uint8(image, window)
    for z in range(image.shape[0]):
        if skip_empty and not mask[z].any():
            continue
        stem = folder / f"{prefix}_z{z:04d}"
        Image.fromarray(np.ascontiguousarray(gray[z])).save(f"{stem}_image.png")
        Image.fromarray(np.ascontiguousarray(mask[z].astype(np.uint8))).save(f"{stem}_mask.png")
        written.append(f"{stem}_image.png")
    return written


def read_image_volume(
    path: str | os.PathLike, *, pad_hu: int = -1024, max_voxels: int = MAX_VOXELS
) -> Volume:
    """Read a case image: a volume file, or a folder (or file) of one DICOM series.

    DICOM goes through :func:`dsbprep.io.dicom.load_scan` (any modality), so CT is in HU;
    volume files through :func:`dsbprep.io.volume.read_volume`, values as stored.

    Raises
    ------
    VolumeFileError
        An unreadable or refused volume file (a :class:`MaskSourceError`).
    DicomSeriesError
        An unreadable DICOM series.
    """
    path = Path(path)
    if path.is_file() and is_volume_file(path):
        return read_volume(path, max_voxels=max_voxels)
    from ..io.dicom import load_scan

    scan = load_scan(path, allowed_modalities=None, pad_hu=pad_hu, max_voxels=max_voxels)
    return Volume(
        scan.hu,
        scan.spacing,
        scan.origin,
        np.asarray(scan.direction, float),
        str(path),
        list(scan.warnings),
    )


def _volume_files(folder: Path) -> dict[str, Path]:
    """Case id -> volume file of ``folder`` (not recursive; hidden files left out)."""
    if not folder.is_dir():
        return {}
    return {volume_case_id(p): p for p in sorted(folder.iterdir())
            if not p.name.startswith(".") and p.is_file() and is_volume_file(p)}


def discover_volume_pairs(
    data_directory: str | os.PathLike,
    *,
    images_dir: str = "imagesTr",
    labels_dir: str = "labelsTr",
    channel: str = "_0000",
) -> list[Task]:
    """One :class:`Task` per label file of ``DIR/labels_dir`` (see the module docstring).

    A label without an image still gets a task; building it fails saying what is missing.

    Raises
    ------
    FileNotFoundError
        ``data_directory`` or its ``labels_dir`` does not exist.
    """
    root = Path(data_directory)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist")
    if not (root / labels_dir).is_dir():
        raise FileNotFoundError(f"{root / labels_dir}: no such folder ([volumes] labels_dir)")
    images = _volume_files(root / images_dir)
    labels = _volume_files(root / labels_dir)
    tasks, used = [], set()
    for case, label in labels.items():
        key = case + channel if case + channel in images else case
        image = images.get(key)
        used.add(key)
        # a MetaImage's .raw/.zraw beside it is part of the input too (resume must see it)
        files = [f for v in (label, image) if v for f in with_data_files(v)]
        inputs = {"folder": str(root), "image": str(image) if image else None,
                  "label": str(label)}
        tasks.append(Task(case, listing_fingerprint(files, root), inputs))
    unlabelled = sorted(set(images) - used)
    if unlabelled:
        logger.warning("%s: %d image(s) without a label in %s are skipped (e.g. %s)",
                       root, len(unlabelled), labels_dir, images[unlabelled[0]].name)
    return tasks


def _tuple3(value: Any, what: str) -> tuple[float, float, float] | None:
    if value in ("", None):
        return None
    values = tuple(float(v) for v in np.atleast_1d(value))
    values = values * 3 if len(values) == 1 else values
    if len(values) != 3 or min(values) <= 0:
        raise ValueError(
            f"{what} must be one or three positive mm values (z, y, x), got {value!r}"
        )
    return values



@dataclass
class LabelledVolumeSource(SourceBase):
    """Image + label volume per case -> 3-D (image, label mask) cases; subclasses discover.

    Parameters
    ----------
    label_map : str
        ``"OUT=IN IN ...; OUT=IN ..."`` (see :func:`parse_label_map`); '' keeps values.
    label_bits : int
        Bit mask applied to label values first (0 = none).
    target_spacing : tuple of 3 float or None
        Resample to this (z, y, x) mm spacing; None keeps the image grid.
    spacing_tolerance_mm, origin_tolerance_mm, direction_tolerance : float
        Alignment tolerances (:func:`dsbprep.io.volume.check_alignment`).
    png_directory : str
        When set, also export axial PNG pairs to ``<png_directory>/<case>/``.
    png_window : tuple of 2 float
        Image window of the PNGs.
    image_dtype : str
        dtype of the stored images (int16 for CT in HU).
    pad_value : float
        Image value outside every case (air for CT).
    max_voxels : int
        Refuse image or label files declaring more voxels (``[dicom] max_voxels``).
    """

    label_map: str = ""
    label_bits: int = 0
    target_spacing: tuple[float, float, float] | None = None
    spacing_tolerance_mm: float = SPACING_TOLERANCE_MM
    origin_tolerance_mm: float = ORIGIN_TOLERANCE_MM
    direction_tolerance: float = DIRECTION_TOLERANCE
    png_directory: str = ""
    png_window: tuple[float, float] = PNG_WINDOW
    image_dtype: str = "int16"
    pad_value: float = -1024
    chunks: tuple[int, int, int] | None = None
    max_voxels: int = MAX_VOXELS
    kind: ClassVar[str] = "volume"
    #: config section holding the label options (error messages).
    section: ClassVar[str] = "volumes"

    def __post_init__(self) -> None:
        self._map = parse_label_map(self.label_map)
        self.target_spacing = _tuple3(self.target_spacing, f"[{self.section}] target_spacing")
        dtype = np.dtype(self.image_dtype)
        if dtype.kind not in "iuf":
            raise ValueError(
                f"[{self.section}] image_dtype must be a numeric dtype, got {self.image_dtype!r}"
            )
        self.png_window = tuple(float(v) for v in self.png_window)  # type: ignore[assignment]

    def _read_pair(self, task: Task) -> tuple[Volume, Volume, list[str]]:
        """Image and label on the standard axes, checked to share one grid."""
        image = read_image_volume(task.inputs["image"], pad_hu=int(self.pad_value),
                                  max_voxels=self.max_voxels)
        label = read_volume(task.inputs["label"], max_voxels=self.max_voxels)
        image, how_image = canonical_axes(image)
        label, how_label = canonical_axes(label)
        check_alignment(
            image,
            label,
            spacing_tolerance_mm=self.spacing_tolerance_mm,
            origin_tolerance_mm=self.origin_tolerance_mm,
            direction_tolerance=self.direction_tolerance,
        )
        notes = image.notes + label.notes
        notes += [f"{v.path}: {how}" for v, how in ((image, how_image), (label, how_label)) if how]
        return image, label, notes

    def _export_pngs(self, task: Task, array: np.ndarray, mask: np.ndarray) -> list[str]:
        if not self.png_directory:
            return []
        try:
            return export_png_slices(array, mask, Path(self.png_directory) / task.case_id,
                                     task.case_id, window=self.png_window)
        except OSError as err:
            raise DsbprepError(
                f"{task.case_id}: cannot write PNG slices to {self.png_directory}: {err}"
            ) from err

    def process(self, task: Task) -> CaseData:
        for key in ("image", "label"):
            if not task.inputs.get(key):
                raise MaskSourceError(self._missing(task, key))
        image, label, notes = self._read_pair(task)
        mask = map_labels(label.array, self._map, bits=self.label_bits, name=label.path)
        values = np.unique(label.array)
        if label.array.any() and not mask.any():
            notes.append(
                f"{label.path}: has labels {values[1:10].tolist()} but none is in "
                f"label_map {self.label_map!r}: the mask is empty"
            )
            logger.warning("%s", notes[-1])
        array, spacing = image.array, image.spacing
        if self.target_spacing is not None:
            array = resample_to_spacing(array.astype(np.float32), spacing, self.target_spacing,
                                        order=1)
            mask = resample_to_spacing(mask, spacing, self.target_spacing, order=0)
            spacing = self.target_spacing
        array = self._cast(array, notes)
        pngs = self._export_pngs(task, array, mask)
        meta = {
            "image": task.inputs["image"],
            "label": task.inputs["label"],
            "label_values": [int(v) for v in values],
            "mask_voxels": {str(int(k)): int(n)
                            for k, n in zip(*np.unique(mask, return_counts=True), strict=True) if k},
            "png_slices": len(pngs),
            "png_directory": str(Path(self.png_directory) / task.case_id) if pngs else "",
            "warnings": notes,
            "parameters": {"label_map": self.label_map, "label_bits": self.label_bits,
                           "target_spacing": self.target_spacing},
        }
        return self.case_data(task, array, mask, meta, spacing=tuple(float(s) for s in spacing),
                              origin=image.origin, direction=image.direction,
                              original_spacing=image.spacing,
                              shape_before_crop=image.array.shape)

    def _missing(self, task: Task, key: str) -> str:
        return f"{task.inputs['folder']}: case {task.case_id} has no {key} file"

    def _cast(self, array: np.ndarray, notes: list[str]) -> np.ndarray:
        dtype = np.dtype(self.image_dtype)
        if array.dtype == dtype:
            return array
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            rounded = np.rint(array)
            if rounded.size and (rounded.min() < info.min or rounded.max() > info.max):
                notes.append(
                    f"image values {rounded.min():g}..{rounded.max():g} clipped to {dtype}"
                )
            return np.clip(rounded, info.min, info.max).astype(dtype)
        return array.astype(dtype)


@dataclass
class VolumesSource(LabelledVolumeSource):
    """nnU-Net / Decathlon image + label files -> 3-D (image, label mask) cases.

    Parameters
    ----------
    images_dir, labels_dir : str
        Folders of the data directory holding the images and the label maps.
    channel : str
        Suffix of the image of a case (nnU-Net's ``_0000``); ``<case>.<ext>`` is used when
        there is no ``<case><channel>.<ext>``.
    **options
        See :class:`LabelledVolumeSource`.
    """

    images_dir: str = "imagesTr"
    labels_dir: str = "labelsTr"
    channel: str = "_0000"
    name: ClassVar[str] = "volumes"

    @classmethod
    def from_config(cls, config: Any) -> VolumesSource:
        p = config.params("volumes")
        return cls(
            images_dir=str(p["images_dir"]),
            labels_dir=str(p["labels_dir"]),
            channel=config.parser.get("volumes", "channel"),
            label_map=config.parser.get("volumes", "label_map"),
            label_bits=int(p["label_bits"]),
            target_spacing=p["target_spacing"],
            image_dtype=str(p["image_dtype"]),
            pad_value=float(p["pad_value"]),
            chunks=tuple(config.get("build", "chunks")),
            max_voxels=int(config.get("dicom", "max_voxels")),
        )

    def discover(self, data_directory: str | os.PathLike) -> list[Task]:
        return discover_volume_pairs(data_directory, images_dir=self.images_dir,
                                     labels_dir=self.labels_dir, channel=self.channel)

    def _missing(self, task: Task, key: str) -> str:
        folder = self.images_dir if key == "image" else self.labels_dir
        return (f"{task.inputs['folder']}: case {task.case_id} has no {key} file in {folder}/ "
                f"([volumes] {key}s_dir, channel {self.channel!r})")
