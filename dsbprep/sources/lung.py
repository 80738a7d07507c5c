"""Lung CT source: one patient folder of DICOM files -> one 3-D training case.

Layouts: Kaggle DSB ``stage1/<patient>/*.dcm`` (flat) and LIDC
``<patient>/<study>/<series>/*.dcm`` (nested). Every immediate sub-folder of
the data directory is a patient; a data directory holding files itself (and no
sub-folders) is one patient.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..store import CaseData
from . import Task, listing_fingerprint

__all__ = ["LungSource", "discover_patients"]

logger = logging.getLogger(__name__)


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def discover_patients(data_directory: str | Path) -> list[Task]:
    """One :class:`Task` per patient folder under ``data_directory``.

    Raises
    ------
    FileNotFoundError
        ``data_directory`` does not exist.
    """
    root = Path(data_directory)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        files = _files_under(root)
        return [Task(root.name, listing_fingerprint(files, root), {"folder": str(root)})] if files else []
    tasks = []
    for folder in subdirs:
        files = _files_under(folder)
        tasks.append(Task(folder.name, listing_fingerprint(files, folder), {"folder": str(folder)}))
    return tasks


@dataclass
class LungSource:
    """Chest CT DICOM series -> (uint8 training volume, lung label mask, nodule boxes) cases.

    Per case: :func:`dsbprep.dicom.load_scan`, :func:`dsbprep.segment.segment_lungs`,
    :func:`dsbprep.preprocess.prepare_lung_volume`, and nodule boxes from the LIDC
    reader XML in the folder and/or a LUNA16 ``annotations.csv``.

    Parameters
    ----------
    dicom, segmentation, preprocess : dict
        Keyword arguments of the three stage functions (config sections of the same names).
    annotations : dict
        ``lidc_xml`` (bool), ``min_diameter_mm``, ``min_readers``, ``luna_csv`` (path or "").
    allow_one_lung : bool
        Store a case in which only one lung was found (flagged in its meta) instead of failing it.
    """

    dicom: dict[str, Any] = field(default_factory=dict)
    segmentation: dict[str, Any] = field(default_factory=dict)
    preprocess: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, Any] = field(default_factory=dict)
    luna: dict[str, list] = field(default_factory=dict)
    allow_one_lung: bool = True
    name: str = "lung"
    kind: str = "volume"
    image_dtype: str = "uint8"
    pad_value: float = 170
    chunks: tuple[int, int, int] | None = None

    @classmethod
    def from_config(cls, config: Any) -> LungSource:
        dicom = config.params("dicom")
        mods = dicom.get("allowed_modalities", "CT")
        dicom["allowed_modalities"] = tuple(mods) if isinstance(mods, tuple) else (mods,)
        seg = config.params("segmentation")
        if seg.get("threads", 0) == 0 and int(config.get("build", "workers")) > 1:
            seg["threads"] = 1  # one thread per worker process: the processes use the cores
        prep = config.params("preprocess")
        allow_one = bool(prep.pop("allow_one_lung"))
        ann = config.params("annotations")
        luna = {}
        if ann.get("luna_csv"):
            from ..annotations import read_luna_csv

            luna = read_luna_csv(ann["luna_csv"])
        return cls(dicom=dicom, segmentation=seg, preprocess=prep, annotations=ann, luna=luna,
                   allow_one_lung=allow_one, pad_value=prep["pad_value"],
                   chunks=tuple(config.get("build", "chunks")))

    def discover(self, data_directory: str | Path) -> list[Task]:
        return discover_patients(data_directory)

    def process(self, task: Task) -> CaseData:
        from .._version import __version__
        from ..dicom import load_scan
        from ..errors import SegmentationError
        from ..geometry import voxel_to_world
        from ..preprocess import prepare_lung_volume
        from ..segment import segment_lungs

        folder = task.inputs["folder"]
        scan = load_scan(folder, **self.dicom)
        masks = segment_lungs(scan.hu, scan.spacing, direction=scan.direction, **self.segmentation)
        if masks.found == 0 or (masks.found == 1 and not self.allow_one_lung):
            raise SegmentationError(
                f"{folder}: lung segmentation found {masks.found} lung(s): {masks.reason}"
            )
        tv = prepare_lung_volume(scan.hu, scan.spacing, masks.left, masks.right, **self.preprocess)
        crop_start_original = tv.original_index(np.zeros(3))
        origin = voxel_to_world(crop_start_original, scan.origin, scan.spacing, scan.direction)
        boxes, nodules = self._boxes(folder, scan, tv, origin)
        meta = {
            "source": self.name,
            "dsbprep_version": __version__,
            "folder": folder,
            "patient_id": scan.patient_id,
            "series_uid": scan.series_uid,
            "study_uid": scan.study_uid,
            "series_sha256": scan.source_hash,
            "n_files": len(scan.source_files),
            "original_shape": list(scan.hu.shape),
            "original_origin": list(scan.origin),
            "crop_box_original": [tv.original_index(np.zeros(3)).tolist(),
                                  tv.original_index(np.array(tv.image.shape) - 1).tolist()],
            "lungs_found": masks.found,
            "segmentation_note": masks.reason,
            "segmentation_method": masks.method,  # issue 17 (seg branch): grt123 or robust
            "lung_volume_ml": {"left": float(masks.left.sum() * np.prod(scan.spacing) / 1000),
                               "right": float(masks.right.sum() * np.prod(scan.spacing) / 1000)},
            "nodules": nodules,
            "warnings": list(scan.warnings),
            "parameters": {"dicom": self.dicom, "segmentation": self.segmentation,
                           "preprocess": self.preprocess, "annotations": self.annotations},
        }
        return CaseData(
            case_id=task.case_id,
            image=tv.image,
            mask=tv.labels,
            spacing=tv.spacing,
            origin=tuple(float(v) for v in origin),
            direction=scan.direction,
            original_spacing=scan.spacing,
            shape_before_crop=tv.resampled_shape,
            crop_box=tv.crop_box,
            boxes=boxes,
            source_hash=task.fingerprint,
            meta=meta,
        )

    def _boxes(self, folder: str, scan: Any, tv: Any, origin: np.ndarray) -> tuple[np.ndarray, list]:
        """Nodule boxes in the stored frame from the LIDC XML and/or the LUNA16 CSV."""
        from ..annotations import find_lidc_xml, lidc_nodules, nodules_to_boxes
        from ..geometry import world_to_voxel

        nodules = []
        if self.annotations.get("lidc_xml", True):
            xml = find_lidc_xml(folder)
            if xml is not None:
                nodules += lidc_nodules(
                    xml, origin=scan.origin, spacing=scan.spacing, direction=scan.direction,
                    series_uid=scan.series_uid,
                    min_diameter_mm=self.annotations.get("min_diameter_mm", 3.0),
                    min_readers=int(self.annotations.get("min_readers", 1)),
                )
        nodules += self.luna.get(scan.series_uid, [])
        if not nodules:
            return np.zeros((0, 8), np.float32), []
        boxes = nodules_to_boxes(
            nodules,
            to_stored_index=lambda w: world_to_voxel(w, origin, tv.spacing, scan.direction),
            stored_spacing=tv.spacing,
            stored_shape=tv.image.shape,
        )
        described = [{"center_world_zyx": list(n.center), "diameter_mm": n.diameter_mm,
                      "n_readers": n.n_readers} for n in nodules]
        return boxes, described
