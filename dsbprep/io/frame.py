"""One single-frame DICOM image -> :class:`Frame` (pixels after the modality LUT, geometry).

The reader of the 2-D sources (Sunnybrook contours, SIIM-ACR RLE masks). The file goes
through :func:`dsbprep.io.dicom.read_dataset`, so a Deflated Explicit VR file is inflated
with a cap; tags and orientation are read by the helpers the series reader uses.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DicomSeriesError
from .tags import floats, orientation_to_direction

__all__ = ["NOMINAL_Z_SPACING_MM", "Frame", "read_dicom_frame"]

logger = logging.getLogger(__name__)

#: z spacing recorded for a 2-D frame without SliceThickness (mm); only a placeholder.
NOMINAL_Z_SPACING_MM = 1.0


@dataclass
class Frame:
    """One 2-D DICOM image with its geometry.

    Attributes
    ----------
    pixels : ndarray (y, x)
        Modality-LUT values (float64, or the stored integer dtype when there is no rescale).
    spacing : tuple of 3 float
        (z, y, x) mm: SliceThickness (or ``NOMINAL_Z_SPACING_MM``), then PixelSpacing
        (or ImagerPixelSpacing) rows and columns.
    origin : tuple of 3 float
        World (z, y, x) of pixel [0, 0] (ImagePositionPatient reversed; zeros when absent).
    direction : ndarray (3, 3)
        Columns: world (z, y, x) unit vectors of index axes (normal, row index, column index).
    patient_id, sop_instance_uid, modality, photometric : str
    notes : list of str
        pydicom warnings and fallbacks met while reading.
    """

    pixels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    patient_id: str
    sop_instance_uid: str
    modality: str
    photometric: str
    notes: list[str] = field(default_factory=list)


def _open(path: Path):
    """The dataset of ``path`` with decodable pixels; DicomSeriesError naming the file."""
    from pydicom.errors import InvalidDicomError

    from .dicom import MAX_FILE_BYTES, _read_dataset
    from .inflate import InflateLimitError

    try:
        with open(path, "rb") as fh:
            ds = _read_dataset(fh, max_inflated_bytes=MAX_FILE_BYTES, name=str(path), force=False)
    except InflateLimitError as err:
        raise DicomSeriesError(f"{err} (Deflated Explicit VR Little Endian body)") from err
    except (InvalidDicomError, OSError) as err:
        raise DicomSeriesError(f"{path}: cannot read as DICOM: {err}") from err
    try:
        raw = ds.pixel_array
    except Exception as err:  # pydicom raises many types for undecodable pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise DicomSeriesError(
            f"{path}: cannot decode the pixel data (transfer syntax {syntax}): {err}"
        ) from err
    if raw.ndim != 2:
        raise DicomSeriesError(
            f"{path}: expected one 2-D grayscale frame, got pixel array of shape {raw.shape}"
        )
    return ds, raw


def read_dicom_frame(path: str | Path) -> Frame:
    """Read one single-frame grayscale DICOM image (any transfer syntax pydicom decodes).

    JPEG-compressed files (SIIM-ACR's JPEG Baseline) decode through pylibjpeg. pydicom's
    warnings (e.g. Sunnybrook's invalid UIDs) are caught and returned in ``notes``.
    MONOCHROME1 images are inverted so that larger values are brighter.

    Parameters
    ----------
    path : str or Path
        The ``.dcm`` file.

    Returns
    -------
    Frame

    Raises
    ------
    DicomSeriesError
        The file is missing, not DICOM, has no decodable pixels, is not one 2-D grayscale
        frame, or its deflated body inflates past the file size limit.

    Examples
    --------
    >>> frame = read_dicom_frame("dicoms/SCD0000101/48.dcm")  # doctest: +SKIP
    >>> frame.pixels.shape, frame.spacing  # doctest: +SKIP
    ((256, 256), (10.0, 1.367188, 1.367188))
    """
    from pydicom.pixels import apply_modality_lut

    path = Path(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds, raw = _open(path)
        pixels = apply_modality_lut(raw, ds)
        photometric = str(ds.get("PhotometricInterpretation", ""))
        notes: list[str] = []
        if photometric == "MONOCHROME1":
            pixels = pixels.max() + pixels.min() - pixels
            notes.append("MONOCHROME1 inverted so that larger values are brighter")
        pix = floats(ds.get("PixelSpacing"), 2) or floats(ds.get("ImagerPixelSpacing"), 2)
        if pix is None:
            pix = (1.0, 1.0)
            notes.append("no PixelSpacing/ImagerPixelSpacing: 1 mm assumed")
        thickness = floats([ds.get("SliceThickness")], 1)
        z = thickness[0] if thickness and thickness[0] > 0 else NOMINAL_Z_SPACING_MM
        ipp = floats(ds.get("ImagePositionPatient"), 3)
        frame = Frame(
            pixels=pixels,
            spacing=(float(z), float(pix[0]), float(pix[1])),
            origin=tuple(float(v) for v in ipp[::-1]) if ipp else (0.0, 0.0, 0.0),  # type: ignore[arg-type]
            direction=orientation_to_direction(floats(ds.get("ImageOrientationPatient"), 6)),
            patient_id=str(ds.get("PatientID", "")),
            sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
            modality=str(ds.get("Modality", "")),
            photometric=photometric,
            notes=notes,
        )
    frame.notes.extend(f"{path.name}: {w.message}" for w in caught)
    for note in frame.notes:
        logger.debug("%s", note)
    return frame
