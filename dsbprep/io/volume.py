"""Volume files (MetaImage, NIfTI, NRRD) and DICOM folders -> one :class:`Scan` in HU.

:func:`load_volume` is the one entry point of the lung source:

========================  =====================================  ============================
input                     read by                                why
========================  =====================================  ============================
DICOM series folder/file  :func:`dsbprep.io.dicom.load_scan`     own series logic (choosing,
                          (pydicom)                              ordering, padding, HU) that a
                                                                 generic reader does not have
``.mhd`` / ``.mha``       SimpleITK (ITK's MetaIO)               the reference MetaImage
                                                                 reader; LUNA16 was written
                                                                 with it
``.nii`` / ``.nii.gz``    SimpleITK (ITK's NIfTI IO)             qform/sform, scl_slope/inter
                                                                 and RAS -> LPS as ITK, MONAI
                                                                 and TorchIO read them
``.nrrd`` / ``.nhdr``     :func:`dsbprep.io.nrrd.read_nrrd_volume`  all NRRD encodings (ITK's
                          (pynrrd header, data decoded here)     NRRD reader has no bzip2),
                                                                 bounded decoding
========================  =====================================  ============================

Before any reader opens a volume file, :func:`dsbprep.io.headers.check_volume_file`
checks its header (detached data inside the case folder, size under ``max_voxels``,
compressed data not inflating past the declared size). 4-D and vector images are refused.

Orientation: every reader returns geometry in dsbprep's frame (world (z, y, x) = (S, P, L),
LPS reversed; NIfTI's RAS is converted by ITK). :func:`canonical_axes` then permutes and
flips the array axes (exactly, no resampling) so that index z runs along +S, y along +P and
x along +L as closely as the file allows - the layout of an axial DICOM series - so a
sagittal-first or x-flipped file gives the same stored volume, and the left lung is on the
same side, as the DICOM build; ``voxel_to_world`` of any voxel is unchanged.

HU: integer data are taken as HU; float data (NIfTI with scl_slope/inter, float NIfTI in
HU) are rounded; values outside int16 are clipped (as the DICOM reader does). Data with no
voxel below :data:`MAX_AIR_HU` (no air: raw unsigned values with an offset, MR, a mask)
are refused: a CT in HU always has air around and in the body.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import VolumeFileError
from .dicom import _file_sha256
from .headers import _FORMATS, DataLayout, check_volume_file, volume_format

__all__ = [
    "VOLUME_SUFFIXES",
    "DATA_SUFFIXES",
    "with_data_files",
    "MAX_AIR_HU",
    "Volume",
    "volume_case_id",
    "is_volume_file",
    "read_volume",
    "SPACING_TOLERANCE_MM",
    "ORIGIN_TOLERANCE_MM",
    "DIRECTION_TOLERANCE",
    "check_alignment",
    "canonical_axes",
    "load_volume",
]

logger = logging.getLogger(__name__)

#: File endings of the volume formats (longest first, so ``.nii.gz`` wins over ``.nii``).
VOLUME_SUFFIXES = tuple(sorted(_FORMATS, key=len, reverse=True))
#: Endings of a header's detached data file beside it (MetaImage .raw/.zraw, Analyze .img).
DATA_SUFFIXES = (".raw.gz", ".raw.bz2", ".raw", ".zraw", ".img.gz", ".img")
#: A CT in Hounsfield units has air (about -1000 HU) in it: data whose minimum is above this
#: are not HU (-500 HU: no tissue is below it, lung parenchyma is about -850).
MAX_AIR_HU = -500
_INT16 = np.iinfo(np.int16)
#: Largest spacing difference (mm) between image and label still called "the same grid".
#: ct-64's DICOM series and its NRRD differ by 0.0003 mm in z spacing (rounded header values).
SPACING_TOLERANCE_MM = 0.01
#: Largest origin difference (mm); DICOM positions are often written with 3 decimals.
ORIGIN_TOLERANCE_MM = 0.1
#: Largest difference of any direction-cosine component.
DIRECTION_TOLERANCE = 1e-3


@dataclass
class Volume:
    """A 3-D array with its geometry.

    Attributes
    ----------
    array : ndarray (z, y, x)
    spacing : tuple of 3 float
        mm (z, y, x).
    origin : tuple of 3 float
        World (z, y, x) of voxel [0, 0, 0].
    direction : ndarray (3, 3)
        Column k = world (z, y, x) unit vector of index axis k.
    path : str
        File or folder it was read from.
    notes : list of str
        Assumptions made while reading.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    path: str
    notes: list[str] = field(default_factory=list)


def is_volume_file(path: str | os.PathLike) -> bool:
    """True for a name ending in one of :data:`VOLUME_SUFFIXES` (any case)."""
    return volume_format(path) is not None


def with_data_files(header: str | os.PathLike) -> list[Path]:
    """``header`` and the data files of the same name beside it (``DATA_SUFFIXES``).

    Examples
    --------
    >>> with_data_files("no/such/scan.mhd")
    [PosixPath('no/such/scan.mhd')]
    """
    header = Path(header)
    stem = volume_case_id(header)
    return [header, *(p for s in DATA_SUFFIXES if (p := header.with_name(stem + s)).is_file())]


def volume_case_id(path: str | os.PathLike) -> str:
    """The file name without its volume ending (LUNA16: the SeriesInstanceUID).

    Examples
    --------
    >>> volume_case_id("subset0/1.3.6.1.4.1.14519.5.2.1.6279.6001.1001.mhd")
    '1.3.6.1.4.1.14519.5.2.1.6279.6001.1001'
    >>> volume_case_id("imagesTr/lung_001_0000.nii.gz")
    'lung_001_0000'
    """
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _itk_message(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "error" in ln.lower()]
    return ((errors or lines or ["unknown error"])[-1])[:300]


def _read_sitk(path: Path, layout: DataLayout) -> Volume:
    """MetaImage or NIfTI through SimpleITK, as a (z, y, x) Volume."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("MetaImageIO" if layout.format == "metaimage" else "NiftiImageIO")
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise VolumeFileError(f"{path}: SimpleITK cannot read it: {_itk_message(err)}") from err
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeFileError(f"{path}: vector image ({image.GetNumberOfComponentsPerPixel()} "
                              "components per voxel): only scalar images are supported")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise VolumeFileError(f"{path}: {image.GetDimension()}-D image of size "
                              f"{list(image.GetSize())}: a volume must be 3-D")
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)[::-1, ::-1]
    return Volume(
        array=sitk.GetArrayFromImage(image),
        spacing=tuple(float(v) for v in image.GetSpacing()[::-1]),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in image.GetOrigin()[::-1]),  # type: ignore[arg-type]
        direction=np.ascontiguousarray(direction),
        path=str(path),
    )


def read_volume(path: str | os.PathLike, *, max_voxels: int | None = None) -> Volume:
    """Read a MetaImage, NIfTI or NRRD file as a (z, y, x) :class:`Volume`, after its header check.

    Values are as stored (after NIfTI's scl_slope/inter); axes as in the file (see
    :func:`canonical_axes`).

    Parameters
    ----------
    path : str or Path
        ``.mhd``, ``.mha``, ``.nii``, ``.nii.gz``, ``.nrrd`` or ``.nhdr``.
    max_voxels : int, optional
        Refuse larger declared images (default :data:`dsbprep.io.dicom.MAX_VOXELS`).

    Raises
    ------
    VolumeFileError
        Refused by :func:`dsbprep.io.headers.check_volume_file`, unreadable, not a 3-D
        scalar image (2-D is accepted for NRRD only, as one slice).

    Examples
    --------
    >>> v = read_volume("subset0/1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192.mhd")  # doctest: +SKIP
    >>> v.array.shape, v.spacing  # doctest: +SKIP
    ((133, 512, 512), (2.5, 0.703125, 0.703125))
    """
    from .dicom import MAX_VOXELS

    path = Path(path)
    cap = MAX_VOXELS if max_voxels is None else int(max_voxels)
    if volume_format(path) == "nrrd":
        from .nrrd import read_nrrd_volume

        return read_nrrd_volume(path, max_voxels=cap)
    return _read_sitk(path, check_volume_file(path, max_voxels=cap))


def check_alignment(
    image: Volume,
    label: Volume,
    *,
    spacing_tolerance_mm: float = SPACING_TOLERANCE_MM,
    origin_tolerance_mm: float = ORIGIN_TOLERANCE_MM,
    direction_tolerance: float = DIRECTION_TOLERANCE,
) -> None:
    """Check that ``label`` lies on ``image``'s voxel grid.

    Parameters
    ----------
    image, label : Volume
    spacing_tolerance_mm, origin_tolerance_mm : float
        Largest accepted absolute differences of spacing and origin, mm.
    direction_tolerance : float
        Largest accepted difference of a direction cosine.

    Raises
    ------
    VolumeFileError
        Shapes differ, or spacing, origin or direction differ by more than the tolerance;
        the message names both files and the values.

    Examples
    --------
    >>> a = Volume(np.zeros((2, 3, 4)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), "ct.nrrd")
    >>> b = Volume(np.zeros((2, 3, 4)), (1.0, 1.0, 1.0), (0.0, 0.0, 2.0), np.eye(3), "lm.nrrd")
    >>> check_alignment(a, b)
    Traceback (most recent call last):
    ...
    dsbprep.errors.VolumeFileError: image ct.nrrd vs label lm.nrrd: origin (z, y, x) 0, 0, 0 mm vs 0, 0, 2 mm differ by 2 mm > origin_tolerance_mm=0.1
    """
    where = f"image {image.path} vs label {label.path}"

    def fmt(values) -> str:
        return ", ".join(f"{v:.6g}" for v in np.asarray(values, float).ravel())

    if image.array.shape != label.array.shape:
        raise VolumeFileError(
            f"{where}: shape (z, y, x) {image.array.shape} vs {label.array.shape}: "
            "the label is not on the image grid"
        )
    checks = (
        (
            "spacing (z, y, x)",
            image.spacing,
            label.spacing,
            spacing_tolerance_mm,
            "spacing_tolerance_mm",
            " mm",
        ),
        (
            "origin (z, y, x)",
            image.origin,
            label.origin,
            origin_tolerance_mm,
            "origin_tolerance_mm",
            " mm",
        ),
        (
            "direction",
            image.direction,
            label.direction,
            direction_tolerance,
            "direction_tolerance",
            "",
        ),
    )
    for what, a, b, tol, key, unit in checks:
        diff = float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float))))
        if not diff <= tol:
            raise VolumeFileError(
                f"{where}: {what} {fmt(a)}{unit} vs {fmt(b)}{unit} differ by "
                f"{diff:.4g}{unit} > {key}={tol:g}"
            )


def canonical_axes(volume: Volume) -> tuple[Volume, str]:
    """Permute and flip the array axes so that index (z, y, x) runs along world +(S, P, L).

    Each index axis goes to the world axis its direction is closest to; axes pointing the
    opposite way are flipped, and the origin moves to the new voxel [0, 0, 0]. Exact (no
    resampling): every voxel keeps its world position. An oblique direction that does not
    map one axis to each world axis is left as it is.

    Returns
    -------
    (Volume, str)
        The reoriented volume (the input when nothing changed) and what was done ('' if
        nothing).

    Examples
    --------
    >>> v = Volume(np.arange(8).reshape(2, 2, 2), (1.0, 2.0, 3.0), (0.0, 0.0, 10.0),
    ...            np.diag([1.0, 1.0, -1.0]), "x")
    >>> c, how = canonical_axes(v)
    >>> c.origin, c.direction.diagonal().tolist(), c.array[0, 0].tolist(), how
    ((0.0, 0.0, 7.0), [1.0, 1.0, 1.0], [1, 0], 'flipped x')
    """
    d = np.asarray(volume.direction, float)
    world_of = np.argmax(np.abs(d), axis=0)  # world axis each index axis runs along
    if sorted(world_of.tolist()) != [0, 1, 2]:
        return volume, ""
    order = np.argsort(world_of)
    array = np.transpose(volume.array, order)
    spacing = np.asarray(volume.spacing, float)[order]
    d = d[:, order]
    origin = np.asarray(volume.origin, float)
    flips = [k for k in range(3) if d[k, k] < 0]
    for k in flips:
        origin = origin + d[:, k] * spacing[k] * (array.shape[k] - 1)
        d[:, k] = -d[:, k]
    array = np.flip(array, flips) if flips else array
    what = []
    if order.tolist() != [0, 1, 2]:
        what.append(f"axes (z, y, x) taken from file axes {order.tolist()}")
    if flips:
        what.append("flipped " + ", ".join("zyx"[k] for k in flips))
    if not what:
        return volume, ""
    out = Volume(np.ascontiguousarray(array), tuple(float(s) for s in spacing),  # type: ignore[arg-type]
                 tuple(float(v) for v in origin), d, volume.path, list(volume.notes))  # type: ignore[arg-type]
    return out, "; ".join(what)


def to_hu(array: np.ndarray, path: str) -> tuple[np.ndarray, list[str]]:
    """int16 HU from a volume's values (see the module docstring), with notes; or refuse.

    Raises
    ------
    VolumeFileError
        Non-finite values, or no voxel below :data:`MAX_AIR_HU`.
    """
    notes: list[str] = []
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise VolumeFileError(f"{path}: the image holds NaN or infinite values")
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            notes.append(f"{path}: float values rounded to whole HU")
        array = rounded
    elif array.dtype.kind not in "iu":
        raise VolumeFileError(f"{path}: pixel type {array.dtype} is not a number")
    lo, hi = float(array.min()), float(array.max())
    if lo > MAX_AIR_HU:
        raise VolumeFileError(
            f"{path}: values {lo:g}..{hi:g} have no voxel below {MAX_AIR_HU} HU (no air), so "
            "they are not CT Hounsfield units (unsigned raw values with an offset? an MR or "
            "a mask?); convert the file to HU first"
        )
    if lo < _INT16.min or hi > _INT16.max:
        n = int(np.count_nonzero((array < _INT16.min) | (array > _INT16.max)))
        notes.append(f"{path}: {n} voxel(s) outside the int16 range were clipped")
        array = np.clip(array, _INT16.min, _INT16.max)
    return array.astype(np.int16, copy=False), notes


def _files_hash(files: list[Path]) -> str:
    """sha256 over sorted ``"<size> <sha256>"`` lines of ``files`` (as the DICOM reader)."""
    lines = sorted(f"{f.stat().st_size} {_file_sha256(f)}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def load_volume(path: str | os.PathLike, *, max_voxels: int | None = None, **dicom_options):
    """Load one CT scan as an int16 HU :class:`~dsbprep.io.dicom.Scan`, from any input format.

    Parameters
    ----------
    path : str or Path
        A DICOM series folder (or file), or a ``.mhd``, ``.mha``, ``.nii``, ``.nii.gz``,
        ``.nrrd`` or ``.nhdr`` file (see the module docstring for who reads what).
    max_voxels : int, optional
        Refuse larger images before reading (default :data:`dsbprep.io.dicom.MAX_VOXELS`).
    **dicom_options
        ``series_uid``, ``allowed_modalities``, ``pad_hu`` of
        :func:`~dsbprep.io.dicom.load_scan` (DICOM only; volume files have no tags).

    Returns
    -------
    Scan
        For a volume file: axes as :func:`canonical_axes` leaves them, ``series_uid`` and
        ``patient_id`` = the file name without extension (LUNA16 names its files by
        SeriesInstanceUID), ``source_files`` = the header and its data file.

    Raises
    ------
    DicomSeriesError
        A DICOM input that cannot be loaded.
    VolumeFileError
        A volume file that is refused or unreadable, not 3-D with >= 2 slices, or not in HU.

    Examples
    --------
    >>> scan = load_volume("subset0/1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192.mhd")  # doctest: +SKIP
    >>> scan.hu.shape, scan.series_uid[-6:]  # doctest: +SKIP
    ((133, 512, 512), '603192')
    """
    from .dicom import MAX_VOXELS, Scan, load_scan

    cap = MAX_VOXELS if max_voxels is None else int(max_voxels)
    path = Path(path)
    if not is_volume_file(path) or path.is_dir():
        return load_scan(path, max_voxels=cap, **dicom_options)
    volume = read_volume(path, max_voxels=cap)
    if volume.array.ndim != 3 or volume.array.shape[0] < 2:
        raise VolumeFileError(f"{path}: a volume needs >= 2 slices, shape {volume.array.shape}")
    volume, how = canonical_axes(volume)
    hu, notes = to_hu(volume.array, str(path))
    notes = volume.notes + notes + ([f"{path}: {how}"] if how else [])
    for note in notes:
        logger.info("%s", note)
    files = sorted({path.resolve(), check_volume_file(path, max_voxels=cap, data=False).data_file})
    case = volume_case_id(path)
    return Scan(hu=hu, spacing=volume.spacing, origin=volume.origin, direction=volume.direction,
                patient_id=case, series_uid=case, study_uid="", modality="",
                source_files=tuple(str(f) for f in files), source_hash=_files_hash(files),
                warnings=tuple(notes), padding_value_hu=None)
