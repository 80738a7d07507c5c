"""DICOM series loading: an alias of :mod:`dsbprep.io.dicom`, where the reader lives.

``import dsbprep.dicom`` (and ``from dsbprep.dicom import load_scan``) keep working:
this name is the very same module object, so its private helpers and module
constants are shared too.
"""

import sys

from .io import dicom as _dicom

sys.modules[__name__] = _dicom
