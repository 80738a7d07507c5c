"""NRRD label-volume source: an image (NRRD or DICOM series) plus a label NRRD per case.

Layout of the data directory: one folder per case, named after the case::

    DIR/<case>/image.nrrd     the image: a NRRD file (.nrrd/.nhdr) or a folder of DICOM files
    DIR/<case>/label.nrrd     the label map on the same physical grid

``image_name`` and ``label_name`` (``[nrrd]`` in ``config.ini``) are file names or
glob patterns (e.g. ``ct-*.nrrd``, ``*Dicom``); each must match exactly one entry
of the case folder. The case id and its patient are the folder name.

The per-case work is :class:`dsbprep.sources.volumes.LabelledVolumeSource`'s, shared with
the ``volumes`` source; NRRD files are read by :func:`dsbprep.io.nrrd.read_nrrd_volume`
(arrays (z, y, x), geometry in dsbprep's world (z, y, x) = (S, P, L) frame, ``RAS``/``LAS``
spaces flipped to LPS; detached data only inside the case folder), and both volumes are put
on the standard axes (:func:`dsbprep.io.volume.canonical_axes`). The label must have the image's shape,
and its spacing, origin and direction must agree within the configured tolerances,
otherwise the case fails with a :class:`MaskSourceError` that names both files and
the values that differ.

Labels: ``label_bits`` (a bit mask, 255 = CIP's low byte "ChestRegion"; 0 = keep the
value) is applied first, then ``label_map`` (``"1=9 10 11; 2=12 13 14"``: output label =
input values) - the default gives CIP's left lung (regions 9-11) label 1 and right
lung (12-14) label 2, the convention of dsbprep's lung files. Values not in the map
become 0. An empty map keeps the (masked) values, which must fit in uint8.

Optionally the case is resampled to ``target_spacing`` (image linear, label nearest;
voxel [0, 0, 0] and the origin stay put) and its axial slices are exported as PNG
pairs for 2-D training (seed 001's ``convert_nrrd_to_png``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import MaskSourceError
from ..io.nrrd import read_nrrd_volume
from ..io.volume import (
    DIRECTION_TOLERANCE,
    ORIGIN_TOLERANCE_MM,
    SPACING_TOLERANCE_MM,
    Volume,
    check_alignment,
)
from . import Task, listing_fingerprint
from .volumes import (
    PNG_WINDOW,
    LabelledVolumeSource,
    export_png_slices,
    map_labels,
    parse_label_map,
    read_image_volume,
    resample_to_spacing,
)

__all__ = [
    "Volume",
    "SPACING_TOLERANCE_MM",
    "ORIGIN_TOLERANCE_MM",
    "DIRECTION_TOLERANCE",
    "CIP_LUNG_LABEL_MAP",
    "PNG_WINDOW",
    "read_nrrd_volume",
    "read_image_volume",
    "check_alignment",
    "parse_label_map",
    "map_labels",
    "resample_to_spacing",
    "export_png_slices",
    "discover_nrrd_cases",
    "NrrdSource",
]

#: CIP label maps: left lung = regions 9, 10, 11 -> 1; right lung = 12, 13, 14 -> 2.
CIP_LUNG_LABEL_MAP = "1=9 10 11; 2=12 13 14"


def _match_one(folder: Path, pattern: str) -> Path | None:
    found = sorted(p for p in folder.glob(pattern) if not p.name.startswith("."))
    if len(found) > 1:
        raise MaskSourceError(
            f"{folder}: {len(found)} entries match {pattern!r} ({', '.join(p.name for p in found)}); "
            "make [nrrd] image_name/label_name match one"
        )
    return found[0] if found else None


def _files_of(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    out = []
    # followlinks=False: a symlink loop in a case folder cannot hang discovery
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return out


def discover_nrrd_cases(
    data_directory: str | os.PathLike,
    *,
    image_name: str = "image.nrrd",
    label_name: str = "label.nrrd",
) -> list[Task]:
    """One :class:`Task` per case folder of ``data_directory`` (see the module docstring).

    A folder without a matching label or image still gets a task; building it fails with
    a :class:`MaskSourceError` saying what is missing.

    Raises
    ------
    FileNotFoundError
        ``data_directory`` does not exist.
    MaskSourceError
        A pattern matches several entries of a case folder.
    """
    root = Path(data_directory)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist")
    tasks = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        image = _match_one(folder, image_name)
        label = _match_one(folder, label_name)
        files = [f for p in (image, label) if p is not None for f in _files_of(p)]
        inputs = {
            "folder": str(folder),
            "image": str(image) if image else None,
            "label": str(label) if label else None,
        }
        tasks.append(Task(folder.name, listing_fingerprint(files, folder), inputs))
    return tasks


@dataclass
class NrrdSource(LabelledVolumeSource):
    """Image + label NRRD per case folder -> 3-D (image, label mask) cases.

    Parameters
    ----------
    image_name, label_name : str
        File names or glob patterns inside each case folder.
    **options
        See :class:`dsbprep.sources.volumes.LabelledVolumeSource`; here ``label_map``
        defaults to :data:`CIP_LUNG_LABEL_MAP` and ``label_bits`` to 255.
    """

    image_name: str = "image.nrrd"
    label_name: str = "label.nrrd"
    label_map: str = CIP_LUNG_LABEL_MAP
    label_bits: int = 0xFF
    name: ClassVar[str] = "nrrd"
    section: ClassVar[str] = "nrrd"

    @classmethod
    def from_config(cls, config: Any) -> NrrdSource:
        p = config.params("nrrd")
        chunks = config.get("build", "chunks")
        return cls(
            image_name=str(p["image_name"]),
            label_name=str(p["label_name"]),
            label_map=config.parser.get("nrrd", "label_map"),
            label_bits=int(p["label_bits"]),
            target_spacing=p["target_spacing"],
            spacing_tolerance_mm=float(p["spacing_tolerance_mm"]),
            origin_tolerance_mm=float(p["origin_tolerance_mm"]),
            direction_tolerance=float(p["direction_tolerance"]),
            png_directory=str(p["png_directory"]),
            png_window=tuple(p["png_window"]),
            image_dtype=str(p["image_dtype"]),
            pad_value=float(p["pad_value"]),
            chunks=tuple(chunks),
            max_voxels=int(config.get("dicom", "max_voxels")),
        )

    def discover(self, data_directory: str | os.PathLike) -> list[Task]:
        return discover_nrrd_cases(
            data_directory, image_name=self.image_name, label_name=self.label_name
        )

    def _missing(self, task: Task, key: str) -> str:
        pattern = self.image_name if key == "image" else self.label_name
        return f"{task.inputs['folder']}: no {key} matching {pattern!r} ([nrrd] {key}_name)"
