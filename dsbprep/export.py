"""Export a dsbprep dataset to the files other lung-CT code reads.

``python -m dsbprep.export --format grt123 DATASET.h5 OUTDIR`` writes what the DSB2017
winners' detector (lfz/DSB2017, "grt123", ``training/detector/data.py``) loads:

``<name>_clean.npy``
    uint8, shape (1, z, y, x): the stored (windowed, masked, resampled, cropped)
    lung volume.
``<name>_label.npy``
    float64, shape (n, 4): one row ``z, y, x, diameter`` per nodule, centre in
    stored voxels and diameter in voxels of the stored (~1 mm) grid (``diameter_mm``
    / mean in-plane stored spacing), as grt123's ``prep.py`` writes them;
    ``[[0, 0, 0, 0]]`` for a case without nodules (its loader turns an all-zero
    label into an empty one).
``train.npy``, ``val.npy``, ``test.npy``
    The names of each stored split, a numpy string array (grt123's split files are
    ``np.load``-ed arrays of names), names of more than 20 characters first.
``dsbprep_export.json``
    Which file and label rule (``[annotations] label_rule``) the export came from,
    and each case's id, name, split and number of label rows.

``<name>`` follows ``names`` (:data:`GRT123_NAMES`): grt123's loader takes a name of
more than 20 characters for a Kaggle case and draws its random negative crops from
Kaggle cases only (``np.random.randint(len(kagglenames))`` fails with none); it
cuts a name at its first ``_``. See :func:`grt123_names`.

``--format nnunet`` writes an nnU-Net v2 raw dataset (:func:`export_nnunet`);
``--format npz`` one ``<case>.npz`` per patient as seed 000's pipeline does
(``np.savez_compressed(path, image)``, read back with ``np.load(path)["arr_0"]``):
``arr_0`` is the stored volume, and extra keys carry ``mask``, ``spacing``,
``origin``, ``direction``, ``boxes`` (columns ``box_columns``),
``original_spacing``, ``shape_before_crop`` and ``crop_box``.

Every format writes each file under a temporary name and renames it into place,
so an interrupted export never leaves a truncated file under its final name.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .errors import DatasetFormatError, DsbprepError
from .store import BOX_COLUMNS, CaseRecord, DsbDataset, as_boxes, open_dataset

__all__ = [
    "FORMATS",
    "GRT123_NAMES",
    "GRT123_DIAMETERS",
    "grt123_label",
    "grt123_names",
    "label_rule_of",
    "export_grt123",
    "export_nnunet",
    "export_npz",
    "main",
]

logger = logging.getLogger(__name__)

#: Export formats of the command line.
FORMATS = ("grt123", "nnunet", "npz")
#: How grt123 file names are made from case ids (:func:`grt123_names`).
GRT123_NAMES = ("kaggle", "luna", "as-is")
#: Which stored diameter becomes grt123's label diameter: ``luna16`` = ``diameter_mm``
#: (LUNA16's, what the detector was trained on), ``axial`` = ``diameter_axial_mm``.
GRT123_DIAMETERS = ("luna16", "axial")
#: grt123 data.py: ``len(name) > 20`` is a Kaggle case, ``len(name) < 20`` a LUNA case.
KAGGLE_NAME_MIN = 21
LUNA_NAME_MAX = 19
#: Hex characters of the case id's SHA-1 appended to a name that had to change.
_HASH_CHARS = 8
#: grt123's label for a case without nodules (its data.py drops an all-zero row).
_EMPTY_LABEL = np.zeros((1, 4))
#: The stored splits written as grt123 split files.
_SPLITS = ("train", "val", "test")
#: Manifest written beside every grt123 / nnU-Net export.
MANIFEST = "dsbprep_export.json"
#: Column positions in BOX_COLUMNS.
_CENTER = slice(0, 3)
_DIAMETER = {
    "luna16": BOX_COLUMNS.index("diameter_mm"),
    "axial": BOX_COLUMNS.index("diameter_axial_mm"),
}
_SIZE_YX = slice(BOX_COLUMNS.index("size_y"), BOX_COLUMNS.index("size_x") + 1)


def grt123_label(
    boxes: np.ndarray, spacing: Sequence[float], *, diameter: str = "luna16"
) -> np.ndarray:
    """grt123 label rows (n, 4) ``z, y, x, diameter_voxels`` from dsbprep boxes.

    Parameters
    ----------
    boxes : ndarray (n, 9)
        Boxes in the stored voxel frame, columns :data:`dsbprep.store.BOX_COLUMNS`
        (8-column boxes: see :func:`dsbprep.store.as_boxes`).
    spacing : sequence of 3 float
        Stored voxel size (z, y, x) in mm.
    diameter : {"luna16", "axial"}
        ``diameter_mm`` or ``diameter_axial_mm`` (falling back to ``diameter_mm``
        where unknown, e.g. a LUNA16 CSV row).

    Returns
    -------
    ndarray, float64, (n, 4)
        ``[[0, 0, 0, 0]]`` when there are no boxes. A box without a diameter
        (<= 0) gets the mean of its in-plane sizes in voxels.

    Examples
    --------
    >>> b = np.array([[10, 20, 30, 5, 6, 6, 8.0, 3, 9.6]], np.float32)
    >>> grt123_label(b, (1.0, 0.8, 0.8)).tolist()
    [[10.0, 20.0, 30.0, 10.0]]
    >>> grt123_label(b, (1.0, 0.8, 0.8), diameter="axial").round(3).tolist()
    [[10.0, 20.0, 30.0, 12.0]]
    >>> from dsbprep.store import empty_boxes
    >>> grt123_label(empty_boxes(), (1.0, 1.0, 1.0)).tolist()
    [[0.0, 0.0, 0.0, 0.0]]
    """
    if diameter not in GRT123_DIAMETERS:
        raise ValueError(f"diameter must be one of {GRT123_DIAMETERS}, got {diameter!r}")
    boxes = as_boxes(boxes).astype(np.float64)
    spacing = np.asarray(spacing, float).reshape(3)
    if len(boxes) == 0:
        return _EMPTY_LABEL.copy()
    mm = boxes[:, _DIAMETER[diameter]]
    mm = np.where(np.isfinite(mm), mm, boxes[:, _DIAMETER["luna16"]])
    in_plane = float(spacing[1:].mean())
    size = np.where(mm > 0, mm / in_plane, boxes[:, _SIZE_YX].mean(axis=1))
    return np.column_stack([boxes[:, _CENTER], size])


def _grt123_name(case_id: str, names: str) -> str:
    digest = hashlib.sha1(case_id.encode("utf-8")).hexdigest()
    if names == "as-is":
        return case_id
    name = case_id.replace("_", "-")
    changed = name != case_id
    if names == "kaggle" and (changed or len(name) < KAGGLE_NAME_MIN):
        tail = digest[: max(_HASH_CHARS, KAGGLE_NAME_MIN - len(name) - 1)]
        return f"{name}-{tail}"
    if names == "luna" and (changed or len(name) > LUNA_NAME_MAX):
        return f"{name[: LUNA_NAME_MAX - _HASH_CHARS - 1]}-{digest[:_HASH_CHARS]}"
    return name


def grt123_names(case_ids: Sequence[str], names: str = "kaggle") -> dict[str, str]:
    """File names (``<name>_clean.npy``) for grt123's loader, case id -> name.

    grt123's ``data.py`` takes the part of a file name before its first ``_`` as the
    case name, counts a name of more than 20 characters as a Kaggle case and one of
    fewer than 20 as a LUNA case, and draws the random negative crops of training
    (about one item in seven) from Kaggle cases only. So:

    - ``"kaggle"`` (default): every name has more than 20 characters and no ``_``,
      so every case is also a source of negative crops (the loader needs at least
      one). A case id that qualifies is kept; others get ``_`` -> ``-`` and a ``-``
      plus the first hex digits of the id's SHA-1 (8 or more).
    - ``"luna"``: every name has fewer than 20 characters and no ``_`` (longer ids
      are cut and get 8 SHA-1 digits), for adding the cases to a grt123 folder whose
      Kaggle cases (32-character ids) supply the negatives, as LUNA16 cases were.
    - ``"as-is"``: the case ids unchanged (the export warns about ids the loader
      would misread).

    Raises
    ------
    ValueError
        Unknown ``names``, or two cases would get the same name.

    Examples
    --------
    >>> grt123_names(["LIDC-IDRI-0001", "0a0c32c9e08cc2ea76a71649de56be6d"])
    {'LIDC-IDRI-0001': 'LIDC-IDRI-0001-98e1d3de', '0a0c32c9e08cc2ea76a71649de56be6d': '0a0c32c9e08cc2ea76a71649de56be6d'}
    >>> grt123_names(["LIDC-IDRI-0001"], "luna")
    {'LIDC-IDRI-0001': 'LIDC-IDRI-0001'}
    """
    if names not in GRT123_NAMES:
        raise ValueError(f"names must be one of {GRT123_NAMES}, got {names!r}")
    out = {cid: _grt123_name(cid, names) for cid in case_ids}
    if len(set(out.values())) != len(out):
        dup = sorted(n for n in set(out.values()) if list(out.values()).count(n) > 1)
        raise ValueError(f"grt123 names {dup} would be written for more than one case")
    return out


def _meta_label_rule(meta: dict) -> str:
    """The label rule a case was built with, from its stored build parameters."""
    params = meta.get("parameters", {}).get("annotations")
    if not isinstance(params, dict):
        return "none"  # not an annotated lung build: no nodule labels
    if "label_rule" in params:
        return str(params["label_rule"])
    readers = int(params.get("min_readers", 1))  # built before label rules existed
    return "all" if readers == 1 else f"min_readers={readers}"


def label_rule_of(records: Iterable[CaseRecord]) -> str:
    """The ``[annotations] label_rule`` the cases were built with.

    ``"luna16"`` or ``"all"``; ``"all"`` too for lung files built before label rules
    (they kept every nodule); ``"none"`` for files without nodule annotations (other
    sources); ``"min_readers=N"`` for older files built with ``min_readers`` > 1; the
    rules joined by ``"+"`` when the cases disagree (a file appended to with different
    settings).

    Examples
    --------
    >>> label_rule_of([])
    'none'
    """
    rules = sorted({_meta_label_rule(rec.meta) for rec in records})
    return "+".join(rules) if rules else "none"


def _select(ds: DsbDataset, cases: Iterable[str] | None, split: str | None,
            strict: bool = False, check_meta: bool = False) -> list[CaseRecord]:
    """The cases to export: named ones, else every readable one (unreadable: a warning each,
    or DatasetFormatError with ``strict``), then those of ``split``."""
    if cases is not None:
        cases = list(cases)
        missing = [c for c in cases if c not in ds and c not in ds.unreadable]
        if missing:
            raise DatasetFormatError(f"{ds.path}: no case(s) {missing} (it holds {len(ds)} cases)")
        records = [ds[c] for c in cases]
    else:
        records = list(ds.iter_cases(strict=strict, check_meta=check_meta))  # skipped: a warning
    if split is not None:
        records = [r for r in records if r.split == split]
    return records


def _safe_name(case_id: str, path: str) -> str:
    if not case_id or case_id in (".", "..") or any(ch in case_id for ch in "/\\\0"):
        raise DatasetFormatError(f"{path}: case id {case_id!r} cannot be used as a file name")
    return case_id


def _atomic(path: Path, write) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _write_json(path: Path, obj: dict) -> Path:
    return _atomic(path, lambda fh: fh.write(json.dumps(obj, indent=2).encode("utf-8")))


def _check_grt123_file(ds: DsbDataset) -> None:
    if ds.kind != "volume":
        raise DatasetFormatError(
            f"{ds.path}: holds 2-D {ds.kind!r} cases; the grt123 export needs a 3-D lung CT dataset "
            "(use --format npz for 2-D files)"
        )
    dtype = ds.image_dtype
    if dtype != np.uint8:
        raise DatasetFormatError(
            f"{ds.path}: images are {dtype}, grt123's _clean.npy is the prepared uint8 lung volume "
            "(build the dataset with the lung preprocessing)"
        )


def _warn_about_names(names: dict[str, str]) -> None:
    """Log the names grt123's loader would misread (``as-is`` names)."""
    for name in names.values():
        if "_" in name:
            logger.warning("grt123 name %r: the loader reads it as %r (cut at '_')", name, name.split("_")[0])
        elif len(name) == KAGGLE_NAME_MIN - 1:
            logger.warning("grt123 name %r has 20 characters: neither Kaggle nor LUNA to the loader", name)
    if not any(len(n.split("_")[0]) >= KAGGLE_NAME_MIN for n in names.values()):
        logger.warning(
            "no grt123 name has more than 20 characters: the detector's training loader draws its "
            "random negative crops from such (Kaggle) cases and fails without one (see --names)"
        )


def _split_lists(records: list[CaseRecord], names: dict[str, str]) -> dict[str, np.ndarray]:
    """grt123 split arrays: each stored split's names, Kaggle-length names first.

    grt123's loader indexes its label list with the position in its Kaggle list, which
    is right only when the Kaggle names come first.
    """
    out = {}
    for split in _SPLITS:
        chosen = [names[r.case_id] for r in records if r.split == split]
        chosen.sort(key=lambda n: len(n.split("_")[0]) < KAGGLE_NAME_MIN)  # stable
        out[split] = np.array(chosen, dtype=str)
    unassigned = [r.case_id for r in records if r.split not in _SPLITS]
    if unassigned:
        logger.warning("%d case(s) have no stored split and are in no split file: %s",
                       len(unassigned), unassigned[:5])
    return out


def _write_grt123_case(
    outdir: Path, name: str, rec: CaseRecord, diameter: str
) -> tuple[list[Path], int]:
    clean = rec.arrays()[0][np.newaxis]  # checksum-checked: DatasetFormatError if altered
    label = grt123_label(rec.boxes, rec.spacing, diameter=diameter)
    files = [
        _atomic(outdir / f"{name}_clean.npy", lambda fh: np.save(fh, clean)),
        _atomic(outdir / f"{name}_label.npy", lambda fh: np.save(fh, label)),
    ]
    n_rows = 0 if np.all(label == 0) else len(label)
    logger.info("%s: wrote %s_clean.npy %s and %d label row(s)", rec.case_id, name, clean.shape, n_rows)
    return files, n_rows


def export_grt123(
    dataset_path: str | os.PathLike,
    outdir: str | os.PathLike,
    *,
    cases: Iterable[str] | None = None,
    split: str | None = None,
    strict: bool = False,
    names: str = "kaggle",
    diameter: str = "luna16",
) -> list[Path]:
    """Write grt123's ``<name>_clean.npy``, ``<name>_label.npy`` and split files.

    Parameters
    ----------
    dataset_path : str or Path
        A dsbprep lung (3-D, uint8) dataset file.
    outdir : str or Path
        Output folder (created when absent); existing files are replaced.
    cases : iterable of str, optional
        Only these case ids (all by default).
    split : {"train", "val", "test"}, optional
        Only the cases of this split.
    strict : bool
        Refuse (DatasetFormatError, nothing written) when a case of the file is
        unreadable; by default such a case is skipped with a warning naming it.
    names : {"kaggle", "luna", "as-is"}
        How file names are made from case ids (:func:`grt123_names`).
    diameter : {"luna16", "axial"}
        The label diameter (:func:`grt123_label`).

    Returns
    -------
    list of Path
        The files written: two per case, then ``train.npy``, ``val.npy``, ``test.npy``
        and :data:`MANIFEST`.

    Raises
    ------
    DatasetFormatError
        The file holds 2-D slices or non-uint8 images (grt123 reads the prepared
        uint8 lung volume), or a requested case is absent.

    Examples
    --------
    >>> import tempfile, os
    >>> from dsbprep.store import CaseData, DatasetWriter
    >>> tmp = tempfile.mkdtemp(); h5 = os.path.join(tmp, "lung.h5")
    >>> with DatasetWriter(h5, chunks=(4, 8, 8)) as w:
    ...     w.append(CaseData("p1", np.full((4, 6, 6), 170, np.uint8), np.ones((4, 6, 6), np.uint8)))
    >>> [p.name for p in export_grt123(h5, os.path.join(tmp, "out"))][:2]
    ['p1-b78f576611ec06f96a_clean.npy', 'p1-b78f576611ec06f96a_label.npy']
    """
    outdir = Path(outdir)
    written: list[Path] = []
    with open_dataset(dataset_path) as ds:
        _check_grt123_file(ds)
        records = _select(ds, cases, split, strict, check_meta=True)
        name_of = grt123_names([_safe_name(r.case_id, ds.path) for r in records], names)
        _warn_about_names(name_of)
        outdir.mkdir(parents=True, exist_ok=True)
        listed = []
        for rec in records:
            files, n_rows = _write_grt123_case(outdir, name_of[rec.case_id], rec, diameter)
            written += files
            listed.append({"case_id": rec.case_id, "name": name_of[rec.case_id],
                           "split": rec.split, "label_rows": n_rows})
        for split_name, array in _split_lists(records, name_of).items():
            written.append(_atomic(outdir / f"{split_name}.npy", lambda fh, a=array: np.save(fh, a)))
        manifest = {"format": "grt123", "dataset": os.fspath(dataset_path),
                    "label_rule": label_rule_of(records), "names": names, "diameter": diameter,
                    "cases": listed}
        written.append(_write_json(outdir / MANIFEST, manifest))
        logger.info("grt123 export of %s: label rule %s", ds.path, manifest["label_rule"])
    return written


# --- nnU-Net v2 ------------------------------------------------------------------------------

#: nnU-Net's file ending and the channel suffix of the one image channel.
NNUNET_FILE_ENDING = ".nii.gz"
_CHANNEL = "_0000"
#: Label names of lung files (mask 1 = left lung, 2 = right lung; docs/FORMAT.md).
_LUNG_LABELS = {"background": 0, "left_lung": 1, "right_lung": 2}


def _nnunet_labels(ds: DsbDataset, records: list[CaseRecord]) -> dict[str, int]:
    """dataset.json ``labels``: the lung names for lung files, else ``label_k`` up to the
    largest mask value (a file attribute ``label_names``, JSON {value: name}, names them)."""
    if str(ds.attrs.get("source", "")) == "lung":
        return dict(_LUNG_LABELS)
    named = ds.attrs.get("label_names")
    if named is not None:
        names = {int(k): str(v) for k, v in json.loads(named).items()}
        return {"background": 0, **{names[k]: k for k in sorted(names) if k > 0}}
    top = max((int(rec.mask.max()) for rec in records), default=0)
    return {"background": 0, **{f"label_{k}": k for k in range(1, top + 1)}}


def _sitk_image(array: np.ndarray, rec: CaseRecord):
    """A SimpleITK image of a stored (z, y, x) array with the case's stored geometry.

    ITK orders index and world axes x, y, z (ours z, y, x), so spacing and origin are
    reversed and the direction matrix is flipped on both axes; the NIfTI writer turns
    ITK's LPS world into NIfTI's RAS.
    """
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing([float(v) for v in rec.spacing[::-1]])
    image.SetOrigin([float(v) for v in rec.origin[::-1]])
    image.SetDirection([float(v) for v in np.asarray(rec.direction, float)[::-1, ::-1].ravel()])
    return image


def _write_nifti(path: Path, array: np.ndarray, rec: CaseRecord) -> Path:
    import SimpleITK as sitk

    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # keeps the .nii.gz ending
    try:
        sitk.WriteImage(_sitk_image(array, rec), str(tmp), useCompression=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _nnunet_dataset_json(ds, records, labels, channel_name, n_training) -> dict:
    return {
        "channel_names": {"0": channel_name},
        "labels": labels,
        "numTraining": n_training,
        "file_ending": NNUNET_FILE_ENDING,
        "name": Path(ds.path).stem,
        "description": f"exported by dsbprep from {ds.path}",
        "dsbprep": {"dataset": ds.path, "source": str(ds.attrs.get("source", "")),
                    "label_rule": label_rule_of(records),
                    "test_cases": [r.case_id for r in records if r.split == "test"]},
    }


def export_nnunet(
    dataset_path: str | os.PathLike,
    outdir: str | os.PathLike,
    *,
    cases: Iterable[str] | None = None,
    split: str | None = None,
    strict: bool = False,
    channel_name: str | None = None,
) -> list[Path]:
    """Write an nnU-Net v2 raw dataset (``imagesTr``, ``labelsTr``, ``imagesTs``, dataset.json).

    Each case becomes ``imagesTr/<case>_0000.nii.gz`` (image) and
    ``labelsTr/<case>.nii.gz`` (its mask: lung files 1 = left lung, 2 = right lung);
    cases of the stored ``test`` split become ``imagesTs/<case>_0000.nii.gz`` only
    (nnU-Net makes its own cross-validation folds of the training cases, so ``val``
    cases train). The NIfTI headers carry the stored spacing, origin and direction,
    so images and labels line up with the source scan in a viewer. Run it into
    ``$nnUNet_raw/DatasetNNN_Name``, then ``nnUNetv2_plan_and_preprocess -d NNN
    --verify_dataset_integrity``.

    Parameters
    ----------
    dataset_path : str or Path
        A 3-D dsbprep dataset file (any source).
    outdir : str or Path
        The nnU-Net dataset folder (created when absent); existing files are replaced.
    cases, split, strict
        See :func:`export_grt123`.
    channel_name : str, optional
        dataset.json's ``channel_names["0"]``, which picks nnU-Net's intensity
        normalisation; default ``"CT"`` (fixed intensity scale: global clipping and
        scaling) for lung files, else ``"zscore"``.

    Returns
    -------
    list of Path
        The NIfTI files written, then dataset.json.

    Raises
    ------
    DatasetFormatError
        The file holds 2-D cases, or a requested case is absent.
    """
    outdir = Path(outdir)
    written: list[Path] = []
    with open_dataset(dataset_path) as ds:
        if ds.kind != "volume":
            raise DatasetFormatError(
                f"{ds.path}: holds 2-D {ds.kind!r} cases; the nnunet export needs 3-D"
            )
        records = _select(ds, cases, split, strict, check_meta=True)
        labels = _nnunet_labels(ds, records)
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (outdir / sub).mkdir(parents=True, exist_ok=True)
        n_training = 0
        for rec in records:
            name = _safe_name(rec.case_id, ds.path)
            folder = "imagesTs" if rec.split == "test" else "imagesTr"
            image = outdir / folder / f"{name}{_CHANNEL}{NNUNET_FILE_ENDING}"
            volume, mask = rec.arrays()  # checksum-checked: DatasetFormatError if altered
            written.append(_write_nifti(image, volume, rec))
            if folder == "imagesTr":
                n_training += 1
                label = outdir / "labelsTr" / f"{name}{NNUNET_FILE_ENDING}"
                written.append(_write_nifti(label, mask, rec))
        channel = channel_name or ("CT" if labels == _LUNG_LABELS else "zscore")
        written.append(_write_json(outdir / "dataset.json",
                                   _nnunet_dataset_json(ds, records, labels, channel, n_training)))
    return written


def export_npz(
    dataset_path: str | os.PathLike,
    outdir: str | os.PathLike,
    *,
    cases: Iterable[str] | None = None,
    split: str | None = None,
    strict: bool = False,
    compress: bool = True,
) -> list[Path]:
    """Write one ``<case>.npz`` per case in seed 000's layout (``arr_0`` = the volume).

    Keys: ``arr_0`` (image, stored dtype and shape (z, y, x); a 2-D case is (1, y, x)),
    ``mask`` (uint8), ``spacing``, ``origin`` (3,), ``direction`` (3, 3), ``boxes``
    (n, 8) float32 with ``box_columns``, ``original_spacing``, ``shape_before_crop``,
    ``crop_box`` (3, 2). Every key loads without pickle.

    Parameters
    ----------
    dataset_path : str or Path
        A dsbprep dataset file (3-D or 2-D).
    outdir : str or Path
        Output folder (created when absent); existing files are replaced.
    cases, split, strict
        See :func:`export_grt123`.
    compress : bool
        ``np.savez_compressed`` (as seed 000) or plain ``np.savez``.

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    DatasetFormatError
        A requested case is absent.

    Examples
    --------
    >>> import tempfile, os
    >>> from dsbprep.store import CaseData, DatasetWriter
    >>> tmp = tempfile.mkdtemp(); h5 = os.path.join(tmp, "lung.h5")
    >>> with DatasetWriter(h5, chunks=(4, 8, 8)) as w:
    ...     w.append(CaseData("p1", np.full((4, 6, 6), 170, np.uint8), np.ones((4, 6, 6), np.uint8)))
    >>> [f] = export_npz(h5, os.path.join(tmp, "out"))
    >>> np.load(f)["arr_0"].shape
    (4, 6, 6)
    """
    outdir = Path(outdir)
    save = np.savez_compressed if compress else np.savez
    written: list[Path] = []
    with open_dataset(dataset_path) as ds:
        records = _select(ds, cases, split, strict)
        outdir.mkdir(parents=True, exist_ok=True)
        for rec in records:
            name = _safe_name(rec.case_id, ds.path)
            image, mask = rec.arrays()  # checksum-checked: DatasetFormatError if altered
            arrays = {
                "arr_0": image,
                "mask": mask,
                "spacing": np.asarray(rec.spacing, float),
                "origin": np.asarray(rec.origin, float),
                "direction": np.asarray(rec.direction, float),
                "boxes": np.asarray(rec.boxes, np.float32),
                "box_columns": np.asarray(BOX_COLUMNS),
                "original_spacing": np.asarray(rec.original_spacing, float),
                "shape_before_crop": np.asarray(rec.shape_before_crop, np.int64),
                "crop_box": np.asarray(rec.crop_box, np.int64),
            }
            written.append(_atomic(outdir / f"{name}.npz", lambda fh, a=arrays: save(fh, **a)))
            logger.info("%s: wrote %s.npz", rec.case_id, name)
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dsbprep.export",
        description="Export a dsbprep dataset: grt123's <name>_clean.npy/_label.npy and split "
        "files, an nnU-Net v2 raw dataset, or one .npz per case.",
    )
    parser.add_argument("--format", choices=FORMATS, required=True, help="output layout")
    parser.add_argument("dataset", help="the dsbprep HDF5 file")
    parser.add_argument("outdir", help="output folder (created when absent)")
    parser.add_argument("--cases", nargs="+", metavar="ID", help="only these case ids")
    parser.add_argument(
        "--split", choices=("train", "val", "test"), help="only the cases of this split"
    )
    parser.add_argument(
        "--names", choices=GRT123_NAMES, default="kaggle",
        help="grt123: file names > 20 characters (kaggle: every case also gives the detector's "
        "random negative crops), < 20 (luna: to add to a grt123 folder of Kaggle cases), or the "
        "case ids (as-is) (default: kaggle)",
    )
    parser.add_argument(
        "--diameter", choices=GRT123_DIAMETERS, default="luna16",
        help="grt123: label diameter from diameter_mm (luna16) or diameter_axial_mm (axial) "
        "(default: luna16)",
    )
    parser.add_argument(
        "--channel-name", help="nnunet: channel_names['0'] of dataset.json (default: CT for "
        "lung files, else zscore)",
    )
    parser.add_argument(
        "--no-compress", action="store_true", help="npz: np.savez instead of savez_compressed"
    )
    parser.add_argument(
        "--strict", action="store_true", help="refuse (exit 1, nothing written) when any case of "
        "the file is unreadable, instead of skipping it with a warning naming it",
    )
    return parser


def _run(args: argparse.Namespace) -> tuple[int, str]:
    """Run the export ``args`` asks for; (number of cases, a note for the summary line)."""
    if args.format == "grt123":
        files = export_grt123(args.dataset, args.outdir, cases=args.cases, split=args.split,
                              strict=args.strict, names=args.names, diameter=args.diameter)
        manifest = json.loads((Path(args.outdir) / MANIFEST).read_text())
        return len(manifest["cases"]), f" (label rule {manifest['label_rule']}, names {args.names})"
    if args.format == "nnunet":
        export_nnunet(args.dataset, args.outdir, cases=args.cases, split=args.split,
                      strict=args.strict, channel_name=args.channel_name)
        info = json.loads((Path(args.outdir) / "dataset.json").read_text())
        n_test = len(info["dsbprep"]["test_cases"])
        return info["numTraining"] + n_test, f" ({info['numTraining']} training, {n_test} test)"
    files = export_npz(args.dataset, args.outdir, cases=args.cases, split=args.split,
                       strict=args.strict, compress=not args.no_compress)
    return len(files), ""


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 ok, 1 bad input)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        n_cases, note = _run(args)
    except (DsbprepError, FileNotFoundError, ValueError) as err:
        print(f"dsbprep.export: error: {err}", file=sys.stderr)
        return 1
    print(f"exported {n_cases} case(s) as {args.format} to {args.outdir}{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
