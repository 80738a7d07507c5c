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
    """Chest CT DICOM series -> (image, lung label mask) cases.

    Parameters
    ----------
    dicom : dict
        Keyword arguments of :func:`dsbprep.dicom.load_scan`.
    """

    dicom: dict[str, Any] = field(default_factory=dict)
    name: str = "lung"
    kind: str = "volume"
    image_dtype: str = "int16"
    pad_value: float = -1024
    chunks: tuple[int, int, int] | None = None

    @classmethod
    def from_config(cls, config: Any) -> LungSource:
        dicom = config.params("dicom")
        mods = dicom.get("allowed_modalities", "CT")
        dicom["allowed_modalities"] = tuple(mods) if isinstance(mods, tuple) else (mods,)
        chunks = config.get("build", "chunks")
        return cls(dicom=dicom, chunks=tuple(chunks))

    def discover(self, data_directory: str | Path) -> list[Task]:
        return discover_patients(data_directory)

    def process(self, task: Task) -> CaseData:
        from ..dicom import load_scan

        scan = load_scan(task.inputs["folder"], **self.dicom)
        meta = {
            "source": self.name,
            "folder": task.inputs["folder"],
            "patient_id": scan.patient_id,
            "series_uid": scan.series_uid,
            "study_uid": scan.study_uid,
            "series_sha256": scan.source_hash,
            "n_files": len(scan.source_files),
            "warnings": list(scan.warnings),
            "parameters": {"dicom": self.dicom},
        }
        return CaseData(
            case_id=task.case_id,
            image=scan.hu,
            mask=np.zeros(scan.hu.shape, np.uint8),
            spacing=scan.spacing,
            origin=scan.origin,
            direction=scan.direction,
            original_spacing=scan.spacing,
            shape_before_crop=scan.hu.shape,
            source_hash=task.fingerprint,
            meta=meta,
        )
