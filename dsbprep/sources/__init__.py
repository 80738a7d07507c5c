"""Mask sources: each turns one input layout into :class:`dsbprep.store.CaseData` records.

A source follows the :class:`Source` protocol:

- ``name``, ``kind`` ("volume" or "slices"), ``image_dtype``, ``pad_value``,
  ``chunks`` (or None for the default) - how its dataset file is created;
- ``from_config(config)``: the source configured from ``config.ini``;
- ``discover(data_directory) -> list[Task]``: cheap, runs in the main process;
- ``process(task) -> CaseData``: the per-case work, run in a worker process
  (the source object and the task must pickle).

:class:`SourceBase` holds those attributes' defaults and :meth:`SourceBase.case_data`,
the ``CaseData`` every ``process`` ends with. The sources: ``lung`` (DICOM folders
and volume files -> lung masks), ``volumes`` (image + label volume files, nnU-Net /
Decathlon layout), ``nrrd`` (image + label per case folder), ``contours`` (Sunnybrook)
and ``rle`` (SIIM-ACR). They read files only through :mod:`dsbprep.io`.

``get_source(name, config)`` builds one from the configuration.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..store import CaseData

__all__ = ["Task", "Source", "SourceBase", "SOURCES", "get_source", "listing_fingerprint", "as_pair"]

#: Source name -> "module:class" (imported on demand).
SOURCES = {
    "lung": "dsbprep.sources.lung:LungSource",
    "contours": "dsbprep.sources.contours:ContourSource",
    "rle": "dsbprep.sources.rle:RLESource",
    "nrrd": "dsbprep.sources.nrrd:NrrdSource",
    "volumes": "dsbprep.sources.volumes:VolumesSource",
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


@runtime_checkable
class Source(Protocol):
    """What the build needs of a mask source (see the module docstring)."""

    name: ClassVar[str]
    kind: ClassVar[str]
    image_dtype: str
    pad_value: float
    chunks: tuple[int, int, int] | None

    @classmethod
    def from_config(cls, config: Any) -> Source: ...

    def discover(self, data_directory: str | os.PathLike) -> list[Task]: ...

    def process(self, task: Task) -> CaseData: ...


class SourceBase:
    """Defaults of the attributes every source has, and the ``CaseData`` tail of ``process``.

    Subclasses are dataclasses; they set ``name`` and ``kind`` and declare the attributes
    their configuration changes (e.g. the lung source's ``pad_value``) as fields.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "volume"
    image_dtype: str = "int16"
    pad_value: float = 0
    chunks: tuple[int, int, int] | None = None

    def case_data(self, task: Task, image: Any, mask: Any, meta: dict, **fields: Any) -> CaseData:
        """The case of ``task``: its id and input fingerprint, ``meta`` with the source's name."""
        from ..store import CaseData

        return CaseData(case_id=task.case_id, image=image, mask=mask,
                        source_hash=task.fingerprint, meta={"source": self.name, **meta},
                        **fields)


def as_pair(value: Any, cast: Any) -> tuple:
    """A config value of one or two numbers as a tuple, one number repeated (``cast`` each).

    Examples
    --------
    >>> as_pair(384, int), as_pair((1.2, 1.3), float), as_pair("0", int)
    ((384, 384), (1.2, 1.3), (0, 0))
    """
    import numpy as np

    values = tuple(cast(v) for v in np.atleast_1d(value))
    return values * 2 if len(values) == 1 else values


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


def get_source(name: str, config: Any) -> Source:
    """Instantiate the source ``name`` from a :class:`dsbprep.config.Config`."""
    try:
        target = SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown source {name!r}; expected one of {', '.join(SOURCES)}") from None
    import importlib

    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls).from_config(config)
