"""dsbprep: DICOM folders to one training-ready HDF5 file, and augmented patches from it.

The public API is importable from the package root; submodules load on first
use so that ``import dsbprep`` stays cheap (no matplotlib, torch or dask).

Pipeline stages, one module each: ``dicom`` (series loading, HU), ``segment``
(grt123 lung masks), ``preprocess`` (training volume), ``store`` (the HDF5
format), ``build`` (the parallel, resumable build), ``loader`` (patches and
batches), ``augment`` (random transforms), ``sources`` (contour, RLE and NRRD
mask sources), ``metrics``.
"""

from __future__ import annotations

import importlib
import logging

from ._version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

# public name -> submodule that defines it
_PUBLIC = {
    "DsbprepError": "errors",
    "DicomSeriesError": "errors",
    "SegmentationError": "errors",
    "DatasetFormatError": "errors",
    "MaskSourceError": "errors",
    "StorageFullError": "errors",
    "Scan": "dicom",
    "load_scan": "dicom",
    "list_series": "dicom",
    "SeriesInfo": "dicom",
    "find_dicom_files": "dicom",
    "prepare_lung_volume": "preprocess",
    "TrainingVolume": "preprocess",
    "voxel_to_world": "geometry",
    "world_to_voxel": "geometry",
    "assign_split": "splits",
    "run_build": "build",
    "Nodule": "annotations",
    "lidc_nodules": "annotations",
    "read_luna_csv": "annotations",
    "nodules_to_boxes": "annotations",
    "LABEL_RULES": "annotations",
    "export_grt123": "export",
    "export_nnunet": "export",
    "export_npz": "export",
    "verify_dataset": "verify",
    "BatchLoader": "loader",
    "Batch": "loader",
    "LungMasks": "segment",
    "segment_lungs": "segment",
    "CaseData": "store",
    "CaseRecord": "store",
    "DatasetWriter": "store",
    "DsbDataset": "store",
    "open_dataset": "store",
    "load_config": "config",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'dsbprep' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
