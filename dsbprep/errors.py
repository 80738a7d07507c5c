"""Exception types raised by dsbprep.

Every error that comes from bad input derives from :class:`DsbprepError`, so a
build can catch exactly the failures of one case, record them and go on, while
programming errors (``TypeError`` from a wrong call, ...) still surface.
"""

from __future__ import annotations

__all__ = [
    "DsbprepError",
    "DicomSeriesError",
    "SegmentationError",
    "DatasetFormatError",
    "MaskSourceError",
    "VolumeFileError",
    "StorageFullError",
]


class DsbprepError(Exception):
    """Base class of all dsbprep errors caused by input data or files."""


class DicomSeriesError(DsbprepError):
    """A DICOM folder or file cannot be turned into a volume.

    The message names the folder, the file (when one is to blame) and what is wrong.
    """


class SegmentationError(DsbprepError):
    """The lung segmentation could not produce a usable mask for a case."""


class DatasetFormatError(DsbprepError):
    """An HDF5 dataset file is not a valid dsbprep file (or has a newer format version)."""


class MaskSourceError(DsbprepError):
    """A mask source (contour file, RLE CSV row, label NRRD) is malformed."""


class VolumeFileError(MaskSourceError):
    """A volume file (MetaImage, NIfTI, NRRD) cannot be read, or is refused before reading.

    Refused: detached data outside the case folder or not a regular file, a declared size
    above the voxel cap, compressed data that inflate past the declared size, 4-D or
    vector images, values that are not Hounsfield units where HU are needed. The message
    names the file and the reason. (A :class:`MaskSourceError`, as label volumes are read
    by the same code.)
    """


class StorageFullError(DsbprepError, OSError):
    """The dataset file cannot grow: no space left on the device, a file size limit, a quota.

    Raised before anything of the case is written when the space reservation fails, so
    every case stored before stays intact; the message names the file.
    """
