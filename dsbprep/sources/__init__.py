"""Mask sources: each turns one input layout into :class:`dsbprep.store.CaseData` records.

A source is an object with

- ``name``, ``kind`` ("volume" or "slices"), ``image_dtype``, ``pad_value``,
  ``chunks`` (or None for the default) - how its dataset file is created;
- ``discover(data_directory) -> list[Task]``: cheap, runs in the main process;
- ``process(task) -> CaseData``: the per-case work, run in a worker process
  (the source object and the task must pickle).

``get_source(name, config)`` builds one from the configuration.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Task", "SOURCES", "get_source", "listing_fingerprint"]

#: Source name -> "module:class" (imported on demand).
SOURCES = {
    "lung": "dsbprep.sources.lung:LungSource",
    "contours": "dsbprep.sources.contours:ContourSource",
    "rle": "dsbprep.sources.rle:RLESource",
    "nrrd": "dsbprep.sources.nrrd:NrrdSource",
}


@dataclass(frozen=True)
class Task:
    """One unit of per-case work.

    Attributes
    ----------
    case_id : str
        Id the case gets in the dataset.
    fingerprint : str
        Cheap hash of the inputs (file names and sizes) used to skip done cases on resume.
    inputs : dict
        Whatever the source's ``process`` needs (paths, annotation rows, ...).
    patient_id : str
        Patient of the case, when it differs from ``case_id`` (2-D frames).
    """

    case_id: str
    fingerprint: str
    inputs: dict[str, Any] = field(default_factory=dict)
    patient_id: str = ""

    @property
    def patient(self) -> str:
        """Patient the case belongs to (splits are by patient); defaults to the case id."""
        return self.patient_id or self.case_id


def listing_fingerprint(files: list[Path], root: Path) -> str:
    """SHA-256 over the sorted (relative path, size) pairs of ``files``.

    Cheap enough to compute for thousands of cases before a build starts; a
    changed, added or removed file changes it. (The content hash of the DICOM
    files actually used is computed by the worker and stored in the case's meta.)
    """
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(os.fsencode(os.path.relpath(path, root)))
        h.update(b"\0%d\0" % path.stat().st_size)
    return h.hexdigest()


def get_source(name: str, config: Any) -> Any:
    """Instantiate the source ``name`` from a :class:`dsbprep.config.Config`."""
    try:
        target = SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown source {name!r}; expected one of {', '.join(SOURCES)}") from None
    import importlib

    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls).from_config(config)
