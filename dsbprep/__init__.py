"""dsbprep: DICOM folders to one training-ready HDF5 file, and augmented patches from it.

The public API is importable from the package root; submodules load on first
use so that ``import dsbprep`` stays cheap (no matplotlib, torch or dask).

The map of the package, in pipeline order: follow a case from DICOM to patch.

Inputs
    ``phantom``      the embedded default cohort: synthetic chest CTs written as DICOM
    ``io``           every file reader: ``io.dicom`` a DICOM series -> one HU volume with its
                     geometry (bounded inflation of deflated files), ``io.volume``
                     MetaImage/NIfTI/NRRD files (``load_volume``), ``io.nrrd`` bounded NRRD
                     decoding, ``io.headers`` checks of a volume header before any read
                     (detached data inside the case, voxel cap), ``io.inflate`` capped
                     decompressors, ``io.frame`` single DICOM frames, ``io.tags`` tag
                     helpers; ``dicom`` is an alias of ``io.dicom``
    ``sources``      one input layout per source (lung CT from DICOM folders or volume files,
                     nnU-Net/Decathlon volumes, contours, RLE, NRRD) -> cases
Per case (in the build's worker processes)
    ``segment``      grt123's left/right lung segmentation of the HU volume
                     (``method="grt123"``, exact) or its robust refinement
    ``segment_robust`` airways out, pleural pathology in (``method="robust"``)
    ``airways``      the trachea and bronchi grown from a trachea seed (``segment_robust``)
    ``defaults``     the segmentation and preprocessing defaults, written once
    ``geometry``     voxel <-> world coordinates, bounding boxes
    ``preprocess``   HU volume + lung masks -> grt123's training volume
    ``annotations``  nodule annotations (LIDC XML, LUNA16 CSV) -> boxes in the stored frame
    ``splits``       train/val/test assignment by patient
    ``encode``       a case -> the file's compressed chunks, away from the writer
Dataset file
    ``store``        the HDF5 format: ``format`` (layout, constants, ``CaseData``),
                     ``schema`` (validation of a file and its index rows), ``reader``
                     (``open_dataset``), ``writer`` (``DatasetWriter``), ``recovery``
                     (crash recovery, locking)
    ``build``        discover cases, process them in parallel, append them (resumable)
    ``verify``       re-read every case and check it
    ``report``       the visual QA report (HTML + PNGs)
    ``viz``          every figure: cases, slices, patches
Training
    ``patches``      where to cut patches: samplers of patch origins
    ``augment``      random transforms, drawn then applied: ``spatial`` (flip, rot90,
                     rotation, scaling) composed by ``compose`` into one mapping that
                     ``resample`` (``_kernels``) applies once per patch; ``intensity``
                     (image only); ``presets`` (``preset = nnunet``)
    ``loader``       batches of augmented patches, reproducible and worker-safe
    ``adapters``     PyTorch and Keras datasets over the loader (``ring``: the shared-memory
                     batch slots of the PyTorch adapter)
Afterwards
    ``export``       grt123 ``_clean.npy``/``_label.npy`` + split lists, an nnU-Net v2 raw
                     dataset, or npz files
    ``evaluate``     scores of predicted masks against ground truth, per case
    ``metrics``      Dice, surface Dice, percentile Hausdorff distance
Around
    ``config``       ``config.ini``: every path and parameter
    ``errors``       dsbprep's exception types
    ``cli``          the ``dsbprep`` command (``python -m dsbprep``): one subcommand per
                     command module (build, report, phantom, loader, export, evaluate, verify)
    ``sample``       old name of ``phantom`` (alias)
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
    "VolumeFileError": "errors",
    "StorageFullError": "errors",
    "Scan": "dicom",
    "load_scan": "dicom",
    "list_series": "dicom",
    "SeriesInfo": "dicom",
    "find_dicom_files": "dicom",
    "load_volume": "io.volume",
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
