"""RLE CSV source: 2-D DICOM images with run-length-encoded masks (SIIM-ACR pneumothorax).

Layout of the data directory: any tree of ``<ImageId>.dcm`` files (the file name is the
SOPInstanceUID, as in both the Kaggle sample's flat folder and the competition's
``dicom-images-train/<study>/<series>/<ImageId>.dcm``) and one CSV file of masks,
``csv_name`` (empty: the only ``*.csv`` at the top of the folder).

The CSV has rows ``ImageId,EncodedPixels``; it may start with a UTF-8 BOM, have a
header or not, and put a space before the RLE. ``-1`` (or an empty field) means no
mask. Several rows for one image are merged (union). The encoding is the
competition's *relative* RLE over the column-major flattened image: pairs of
(gap from the end of the previous run, run length), the first gap counted from
pixel 0 (see :func:`rle_decode`).

One case per image that has a CSV row (images without a row are skipped with a
warning): the image and mask resized to ``image_size`` (384 x 384 by default, as
in seed 003; the mask with nearest neighbour), ``CaseData.label`` = 1 when the
image has a mask (pneumothorax), 0 when all its rows are ``-1``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from skimage.transform import resize

from ..errors import DsbprepError, MaskSourceError
from ..io.dicom import read_dataset
from ..io.frame import read_dicom_frame
from ..store import CaseData
from . import SourceBase, Task, as_pair, listing_fingerprint

__all__ = [
    "NO_MASK",
    "DEFAULT_IMAGE_SIZE",
    "rle_decode",
    "rle_encode",
    "read_rle_csv",
    "resize_pair",
    "discover_rle_cases",
    "RLESource",
]

logger = logging.getLogger(__name__)

#: The CSV's "no mask" marker.
NO_MASK = "-1"
#: Seed 003 resizes the 1024 x 1024 radiographs to 384 x 384 to fit GPU memory.
DEFAULT_IMAGE_SIZE = 384
#: Longest CSV field read (bytes). The worst legitimate RLE, alternating single
#: pixels on a 2048 x 2048 radiograph, is 2**21 pairs "g l " of ~4-8 characters
#: (< 16 MiB); Python's csv default (128 KiB) would reject real masks of large
#: images, and no limit would let one line of a hostile CSV fill memory.
MAX_RLE_FIELD_BYTES = 16 * 2**20


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode one relative, column-major RLE string into a boolean mask.

    The string holds pairs ``gap length``: each run starts ``gap`` pixels after the end
    of the previous run (the first one ``gap`` pixels after pixel 0) and covers
    ``length`` pixels of the image flattened in column-major (Fortran) order, i.e. the
    official ``rle2mask(...).reshape(width, height).T``.

    Parameters
    ----------
    rle : str
        The encoded pixels; ``"-1"`` or an empty string decode to an empty mask.
    shape : tuple of 2 int
        (rows, columns) of the image.

    Returns
    -------
    ndarray (rows, columns) bool

    Raises
    ------
    MaskSourceError
        Not integers, an odd count, a negative gap, a non-positive length, or a run past
        the end of the image (the message quotes the bad pair).

    Examples
    --------
    >>> rle_decode("1 2 3 1", (3, 3)).astype(int)
    array([[0, 0, 1],
           [1, 0, 0],
           [1, 0, 0]])
    >>> rle_decode("-1", (2, 2)).any()
    np.False_
    """
    rows, cols = (int(s) for s in shape)
    size = rows * cols
    text = rle.strip()
    flat = np.zeros(size, bool)
    if text in ("", NO_MASK):
        return flat.reshape((rows, cols), order="F")
    try:
        values = np.array(text.split(), dtype=np.int64)
    except (ValueError, OverflowError):
        raise MaskSourceError(f"RLE {text[:40]!r}...: not a list of integers") from None
    if values.size % 2:
        raise MaskSourceError(
            f"RLE has an odd number of values ({values.size}): pairs of (gap, length) expected"
        )
    gaps, lengths = values[0::2], values[1::2]
    if np.any(gaps < 0):
        i = int(np.argmax(gaps < 0))
        raise MaskSourceError(f"RLE pair {i} ({gaps[i]} {lengths[i]}): negative gap")
    if np.any(lengths <= 0):
        i = int(np.argmax(lengths <= 0))
        raise MaskSourceError(f"RLE pair {i} ({gaps[i]} {lengths[i]}): run length must be positive")
    huge = (gaps > size) | (lengths > size)  # before the sums: they could overflow int64
    if np.any(huge):
        i = int(np.argmax(huge))
        raise MaskSourceError(
            f"RLE pair {i} ({gaps[i]} {lengths[i]}): runs past the {rows}x{cols} image ({size} pixels)"
        )
    ends = np.cumsum(gaps + lengths)
    starts = ends - lengths
    if ends.size and ends[-1] > size:
        i = int(np.argmax(ends > size))
        raise MaskSourceError(
            f"RLE pair {i} ({gaps[i]} {lengths[i]}): run ends at pixel {ends[i]}, past the "
            f"{rows}x{cols} image ({size} pixels)"
        )
    # mark run starts +1 and ends -1, then a cumulative sum fills the runs (vectorised)
    edges = np.zeros(size + 1, np.int32)
    np.add.at(edges, starts, 1)
    np.add.at(edges, ends, -1)
    flat = np.cumsum(edges[:-1]) > 0
    return flat.reshape((rows, cols), order="F")


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask as the competition's relative, column-major RLE.

    The inverse of :func:`rle_decode`: maximal runs of non-zero pixels in column-major
    order, each written as ``gap length``. An empty mask encodes as ``"-1"``. Unlike
    the competition's sample ``mask2rle``, a run that reaches the last pixel is kept.

    Parameters
    ----------
    mask : ndarray (rows, columns)
        Non-zero is foreground.

    Returns
    -------
    str

    Examples
    --------
    >>> m = np.zeros((3, 3), bool); m[1:, 0] = True; m[0, 2] = True
    >>> rle_encode(m)
    '1 2 3 1'
    >>> rle_encode(np.zeros((2, 2)))
    '-1'
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (rows, columns), got shape {mask.shape}")
    flat = np.concatenate([[False], mask.ravel(order="F") != 0, [False]])
    change = np.flatnonzero(flat[1:] != flat[:-1])
    if change.size == 0:
        return NO_MASK
    starts, ends = change[0::2], change[1::2]
    gaps = starts - np.concatenate([[0], ends[:-1]])
    pairs = np.stack([gaps, ends - starts], axis=1).ravel()
    return " ".join(str(int(v)) for v in pairs)


def read_rle_csv(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read an ``ImageId,EncodedPixels`` CSV into ``{image_id: [rle, ...]}``.

    Robust to a UTF-8 BOM, a header row or none (a first row whose second field is
    neither ``-1`` nor integers is a header), spaces around fields, blank lines and
    CRLF line ends. Rows keep their file order; ``-1`` rows are kept as ``"-1"``.

    Parameters
    ----------
    path : str or Path
        The CSV file.

    Returns
    -------
    dict
        Image id -> list of its RLE strings (at least one each).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    MaskSourceError
        A row without exactly two fields or with an empty image id (the message gives the line).

    Examples
    --------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "m.csv")
    >>> _ = Path(p).write_text("ImageId, EncodedPixels\\na, -1\\nb, 1 2\\nb, 5 1\\n", encoding="utf-8-sig")
    >>> read_rle_csv(p)
    {'a': ['-1'], 'b': ['1 2', '5 1']}
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RLE CSV {path} does not exist")
    out: dict[str, list[str]] = {}
    number = 0
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh, _csv_field_limit(MAX_RLE_FIELD_BYTES):
            for number, row in enumerate(csv.reader(fh, skipinitialspace=True), start=1):
                _add_row(out, row, path, number)
    except (csv.Error, UnicodeDecodeError) as err:
        raise MaskSourceError(f"{path}: row {number + 1}: not a readable CSV row: {err}") from err
    return out


@contextlib.contextmanager
def _csv_field_limit(limit: int):
    """Set :func:`csv.field_size_limit` (process-wide) for the duration of a read."""
    old = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _add_row(out: dict[str, list[str]], row: list[str], path: Path, number: int) -> None:
    """Add one CSV row to ``out`` (skip blanks and a header on line 1)."""
    fields = [f.strip() for f in row]
    if not any(fields):
        return
    if len(fields) != 2:
        raise MaskSourceError(
            f"{path}: line {number} has {len(fields)} fields, expected 'ImageId,EncodedPixels'"
        )
    image_id, rle = fields
    if number == 1 and not _looks_like_rle(rle):
        return  # header
    if not image_id:
        raise MaskSourceError(f"{path}: line {number} has an empty ImageId")
    out.setdefault(image_id, []).append(rle or NO_MASK)


def _looks_like_rle(text: str) -> bool:
    return text in ("", NO_MASK) or all(part.isdigit() for part in text.split())


def resize_pair(
    image: np.ndarray, mask: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resize an image (linear, anti-aliased when shrinking) and its mask (nearest) to ``size``.

    Parameters
    ----------
    image : ndarray (rows, columns)
    mask : ndarray (rows, columns)
    size : tuple of 2 int
        Output (rows, columns).

    Returns
    -------
    image : ndarray float64, mask : ndarray, the mask's dtype

    Examples
    --------
    >>> im, m = resize_pair(np.ones((4, 4)), np.eye(4, dtype=np.uint8), (2, 2))
    >>> im.shape, m.tolist()
    ((2, 2), [[1, 0], [0, 1]])
    """
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} must have the same shape")
    if tuple(size) == image.shape:
        return image.astype(np.float64), mask.copy()
    out_image = resize(
        image.astype(np.float64),
        size,
        order=1,
        mode="edge",
        anti_aliasing=True,
        preserve_range=True,
    )
    out_mask = resize(
        mask, size, order=0, mode="edge", anti_aliasing=False, preserve_range=True
    ).astype(mask.dtype)
    return out_image, out_mask


def _find_csv(root: Path, csv_name: str) -> Path:
    if csv_name:
        path = root / csv_name
        if not path.is_file():
            raise FileNotFoundError(f"{root}: RLE CSV {csv_name} not found")
        return path
    found = sorted(p for p in root.glob("*.csv") if p.is_file())
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise MaskSourceError(
            f"{root}: expected exactly one *.csv of RLE masks at the top of the folder, found {names}; "
            "set [rle] csv_name"
        )
    return found[0]


def _patient_id(path: Path) -> str:
    """The file's PatientID, or "" when it cannot be read (its case then fails with the reason).

    This pass runs in the writer process over every image, so it reads the header through
    :func:`dsbprep.io.dicom.read_dataset`: a deflated body is inflated only up to the
    header's cap, never in full (a 2 MB file can inflate to gigabytes).
    """
    try:
        ds = read_dataset(path, stop_before_pixels=True)
        return str(ds.get("PatientID", "") or "")
    except DsbprepError:
        return ""


def discover_rle_cases(data_directory: str | os.PathLike, *, csv_name: str = "") -> list[Task]:
    """One :class:`Task` per DICOM image that has a row in the RLE CSV.

    Parameters
    ----------
    data_directory : str or Path
        Folder with the ``.dcm`` files (any depth) and the CSV.
    csv_name : str
        CSV file name inside the folder; empty: the only ``*.csv`` there.

    Returns
    -------
    list of Task
        Case id = ImageId (the file name without ``.dcm``); patient = the DICOM PatientID;
        ``inputs`` = {"dicom": path, "rles": [...], "csv": path}.

    Raises
    ------
    FileNotFoundError
        Missing folder or CSV.
    MaskSourceError
        No or several CSV files, a malformed CSV, or two DICOM files with the same ImageId.
    """
    root = Path(data_directory)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist")
    csv_path = _find_csv(root, csv_name)
    rows = read_rle_csv(csv_path)
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(".dcm") and not name.startswith("."):
                path = Path(dirpath) / name
                image_id = name[: -len(".dcm")]
                if image_id in files:
                    raise MaskSourceError(
                        f"{root}: ImageId {image_id} found twice: {files[image_id]} and {path}"
                    )
                files[image_id] = path
    unlabelled = sorted(set(files) - set(rows))
    missing = sorted(set(rows) - set(files))
    for left_out, what, example in (
        (unlabelled, "DICOM files have no row in {} and are skipped", files.get(unlabelled[0]) if unlabelled else ""),
        (missing, "rows of {} have no DICOM file", missing[0] if missing else ""),
    ):
        if left_out:
            logger.warning("%s: %d %s (e.g. %s)", root, len(left_out), what.format(csv_path.name), example)
    tasks = []
    for image_id in sorted(set(files) & set(rows)):
        path = files[image_id]
        inputs = {"dicom": str(path), "rles": rows[image_id], "csv": str(csv_path)}
        # the masks are part of the input: a changed CSV row rebuilds the case
        fingerprint = hashlib.sha256(
            (listing_fingerprint([path], root) + "\n".join(rows[image_id])).encode()
        ).hexdigest()
        tasks.append(Task(image_id, fingerprint, inputs, patient_id=_patient_id(path)))
    return tasks


@dataclass
class RLESource(SourceBase):
    """SIIM-ACR style DICOM + RLE CSV -> 2-D (image, mask) cases with a class label.

    Parameters
    ----------
    csv_name : str
        RLE CSV inside the data directory ('' = the only ``*.csv`` there).
    image_size : int or tuple of 2 int
        Output (rows, columns) of image and mask; 0 keeps the original size.
    """

    csv_name: str = ""
    image_size: tuple[int, int] | int = DEFAULT_IMAGE_SIZE
    name: ClassVar[str] = "rle"
    kind: ClassVar[str] = "slices"
    image_dtype: str = "uint8"  # pad 0, default chunks: SourceBase's

    def __post_init__(self) -> None:
        size = as_pair(self.image_size, int)
        if len(size) != 2 or min(size) < 0 or (0 in size and size != (0, 0)):
            raise ValueError(
                f"[rle] image_size must be N, 'rows, columns' or 0, got {self.image_size!r}"
            )
        self.image_size = size

    @classmethod
    def from_config(cls, config: Any) -> RLESource:
        p = config.params("rle")
        return cls(csv_name=str(p["csv_name"]), image_size=p["image_size"])

    def discover(self, data_directory: str | os.PathLike) -> list[Task]:
        return discover_rle_cases(data_directory, csv_name=self.csv_name)

    def process(self, task: Task) -> CaseData:
        frame = read_dicom_frame(task.inputs["dicom"])
        shape = frame.pixels.shape
        mask = np.zeros(shape, bool)
        for i, rle in enumerate(task.inputs["rles"]):
            try:
                mask |= rle_decode(rle, shape)
            except MaskSourceError as err:
                raise MaskSourceError(
                    f"{task.inputs['csv']}: ImageId {task.case_id} (row {i + 1} of the image, "
                    f"{task.inputs['dicom']}): {err}"
                ) from err
        label = int(mask.any())
        n_mask = int(mask.sum())
        pixels = np.asarray(frame.pixels, np.float64)
        lo, hi = float(pixels.min()), float(pixels.max())
        top = np.iinfo(np.uint8).max
        if lo < 0 or hi > top:
            # not 8-bit data: stretch min..max onto the uint8 range of the file
            pixels = (pixels - lo) * (top / max(hi - lo, 1.0))
            frame.notes.append(f"pixel values {lo:g}..{hi:g} rescaled linearly to 0..{top}")
        if self.image_size != (0, 0):
            image, mask = resize_pair(pixels, mask.astype(np.uint8), self.image_size)
        else:
            image, mask = pixels, mask.astype(np.uint8)
        zoom = np.asarray(shape, float) / np.asarray(image.shape, float)  # old pixels per new pixel
        spacing = (
            float(frame.spacing[0]),
            float(frame.spacing[1] * zoom[0]),
            float(frame.spacing[2] * zoom[1]),
        )
        # new pixel [0, 0] is centred on old index 0.5 * zoom - 0.5 (centre-aligned resize)
        shift = np.array([0.0, *(0.5 * zoom - 0.5)]) * np.asarray(frame.spacing)
        origin = tuple(float(v) for v in np.asarray(frame.origin) + frame.direction @ shift)
        image = np.clip(np.rint(image), 0, top).astype(np.uint8)
        meta = {
            "source": self.name,
            "dicom": task.inputs["dicom"],
            "csv": task.inputs["csv"],
            "n_rle_rows": len(task.inputs["rles"]),
            "pneumothorax": bool(label),
            "patient_id": frame.patient_id,
            "sop_instance_uid": frame.sop_instance_uid,
            "modality": frame.modality,
            "shape_original": list(shape),
            "mask_pixels_original": n_mask,
            "warnings": frame.notes,
            "parameters": {"image_size": list(self.image_size)},
        }
        return CaseData(
            case_id=task.case_id,
            image=image[None],
            mask=mask[None],
            spacing=spacing,
            origin=origin,
            direction=frame.direction,
            original_spacing=frame.spacing,
            shape_before_crop=(1, *shape),
            source_hash=task.fingerprint,
            label=label,
            meta=meta,
        )
