"""File readers: every image file dsbprep reads is opened by a module of this package.

- :mod:`dsbprep.io.dicom`: a DICOM series folder -> :class:`Scan` (pydicom; own series
  logic: choosing, ordering, HU), and :func:`read_dataset`, one DICOM file with a capped
  inflate of Deflated Explicit VR bodies;
- :mod:`dsbprep.io.frame`: one single-frame DICOM image -> :class:`Frame` (2-D sources);
- :mod:`dsbprep.io.nrrd`: NRRD (.nrrd/.nhdr) -> :class:`Volume` (pynrrd's header parser,
  data decoded here up to the declared size);
- :mod:`dsbprep.io.volume`: :func:`load_volume`, one entry point for a DICOM folder,
  MetaImage (.mhd/.mha), NIfTI (.nii/.nii.gz) and NRRD -> :class:`Scan` in HU
  (SimpleITK reads MetaImage and NIfTI);
- :mod:`dsbprep.io.headers`: header checks run before any volume file is read (detached
  data inside the case folder, declared size under the cap, compressed size bounded);
- :mod:`dsbprep.io.inflate`: bounded decompression; :mod:`dsbprep.io.tags`: tag values and
  orientation helpers shared by the DICOM readers.
"""

from __future__ import annotations

from .dicom import Scan, load_scan, read_dataset
from .frame import Frame, read_dicom_frame
from .nrrd import read_nrrd_volume
from .volume import VOLUME_SUFFIXES, Volume, load_volume, read_volume

__all__ = [
    "Scan",
    "load_scan",
    "read_dataset",
    "Frame",
    "read_dicom_frame",
    "Volume",
    "read_nrrd_volume",
    "read_volume",
    "load_volume",
    "VOLUME_SUFFIXES",
]
