"""Hostile dataset files for the corpus and fuzz tests: a small valid file, its mutations, the commands.

``make_base`` writes a three-case file whose cases have disjoint image value ranges,
so any voxel read from the wrong place shows. ``run_commands`` runs verify, export,
report and the loader on a file in this process and returns what each said; it
checks that every case they read is the original data.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsbprep import export, report, verify
from dsbprep.errors import DsbprepError
from dsbprep.loader import BatchLoader
from dsbprep.store import BOX_COLUMNS, CaseData, DatasetWriter

#: Case id -> (shape, lowest and highest image value): disjoint ranges, pad value 0 outside all.
CASES = {"a": ((5, 9, 11), 1, 50), "b": ((3, 14, 6), 60, 110), "c": ((4, 8, 8), 120, 170)}
#: Bytes of the "secret" local file that external storage / links point at.
SECRET = b"SECRET-KEY-MATERIAL!"


def case_arrays(case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The image and mask the base file stores for ``case_id``."""
    shape, lo, hi = CASES[case_id]
    rng = np.random.default_rng(ord(case_id))
    image = rng.integers(lo, hi + 1, size=shape).astype(np.uint8)
    mask = (image > (lo + hi) // 2).astype(np.uint8)
    return image, mask


def make_base(path: Path) -> Path:
    """Write the valid three-case file (chunks 4 x 8 x 8, uint8, boxes and foreground points)."""
    with DatasetWriter(path, image_dtype="uint8", chunks=(4, 8, 8), compression="gzip",
                       attrs={"source": "lung"}) as w:
        for cid in CASES:
            image, mask = case_arrays(cid)
            box = np.zeros((1, len(BOX_COLUMNS)), np.float32)
            box[0, :6] = [1, 2, 3, 1, 2, 2]
            w.append(CaseData(cid, image, mask, boxes=box, split="train",
                              meta={"warnings": [], "lungs_found": 2}))
    return path


@dataclass
class Said:
    """What one command did: ``rc`` (0 fine, else its exit status), its message, cases it read."""

    rc: int
    text: str
    cases: tuple[str, ...] = ()

    def short(self) -> str:
        line = self.text.strip().splitlines()[0] if self.text.strip() else ""
        return f"rc {self.rc}" + (f" [{', '.join(self.cases)}]" if self.cases else "") + (f": {line}" if line else "")


def _capture(fn, *args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = fn(*args)
    return rc, out.getvalue(), err.getvalue()


def _run_verify(path: Path) -> Said:
    rc, out, err = _capture(verify.main, [str(path)])
    problems = [line for line in out.splitlines() if line.startswith("PROBLEM")]
    return Said(rc, err if rc == 2 else "\n".join(problems) or out)


def _run_export(path: Path, out: Path) -> Said:
    rc, text, err = _capture(export.main, ["--format", "npz", str(path), str(out)])
    files = sorted(out.glob("*")) if out.exists() else []
    for f in files:
        assert SECRET not in f.read_bytes()
    cases = tuple(f.stem for f in files)
    for f in files:  # whatever was exported is an original case, exactly (a renamed row keeps its data)
        with np.load(f) as z:
            names = [f.stem] if f.stem in CASES else list(CASES)
            assert any(_same(z, *case_arrays(cid)) for cid in names), f.name
    return Said(rc, err or text, cases)


def _same(npz, image: np.ndarray, mask: np.ndarray) -> bool:
    return np.array_equal(npz["arr_0"], image) and np.array_equal(npz["mask"], mask) \
        and npz["arr_0"].dtype == image.dtype


def _values_of_one_case(case_id: str, patch: np.ndarray, pad: float) -> bool:
    """Whether ``patch`` holds only padding and values of ``case_id`` (of one case, if renamed)."""
    values = np.unique(patch)
    ranges = [CASES[case_id][1:]] if case_id in CASES else [c[1:] for c in CASES.values()]
    return any(np.all((values == pad) | ((values >= lo) & (values <= hi))) for lo, hi in ranges)


def _run_report(path: Path, out: Path) -> Said:
    rc, text, err = _capture(report.main, [str(path), "--out", str(out), "--max_cases", "0"])
    if rc == 0:
        page = (out / "index.html").read_bytes()
        assert SECRET not in page
        import json

        summary = json.loads((out / "summary.json").read_text())
        failed = [cid for cid, why in summary["failures"].items() if "unreadable" in why]
        return Said(rc, "; ".join(failed and [f"unreadable listed: {failed}"]),
                    tuple(c["case_id"] for c in summary["cases"]))
    return Said(rc, err)


def _run_loader(path: Path) -> Said:
    try:
        with BatchLoader(path, patch_size=(4, 8, 8), batch_size=2, epochs=1, shuffle=False,
                         seed=0) as loader:
            seen = set()
            for batch in loader:
                for k, cid in enumerate(batch.case_ids):
                    patch = batch.images[k]
                    assert _values_of_one_case(cid, patch, loader.pad_value), (cid, np.unique(patch))
                    seen.add(cid)
            return Said(0, "", tuple(sorted(seen)))
    except DsbprepError as err:
        return Said(1, f"{type(err).__name__}: {err}")
    except ValueError as err:  # the loader's documented refusal when no readable case is selected
        assert "no case selected" in str(err) and str(path) in str(err), err
        return Said(1, f"ValueError: {err}")


def run_commands(path: Path, work: Path) -> dict[str, Said]:
    """Run verify, export (npz), report and the loader on ``path``; output under ``work``."""
    logging.getLogger("dsbprep").setLevel(logging.WARNING)
    return {
        "verify": _run_verify(path),
        "export": _run_export(path, work / "export"),
        "report": _run_report(path, work / "report"),
        "loader": _run_loader(path),
    }


# ---------------------------------------------------------------------------------
# The hostile classes of issue 16: each mutates a copy of the base file in place.
# ---------------------------------------------------------------------------------


def _set_row(path: Path, who: str, **fields) -> None:
    import h5py

    with h5py.File(path, "a") as f:
        index = f["index"][:]
        row = int(np.flatnonzero(index["case_id"] == who.encode())[0])
        for name, value in fields.items():
            index[name][row] = value
        f["index"][:] = index


def _append_meta(path: Path, case_id: str, blob: bytes) -> None:
    import h5py

    with h5py.File(path, "a") as f:
        start = f["meta"].shape[0]
        f["meta"].resize(start + len(blob), axis=0)
        f["meta"][start:] = np.frombuffer(blob, np.uint8)
    _set_row(path, case_id, meta_start=start, meta_len=len(blob))


def _edit(path: Path, action) -> None:
    import h5py

    with h5py.File(path, "a") as f:
        action(f)


def _replace(f, name: str, **create) -> None:
    del f[name]
    f.create_dataset(name, **create)


def _secret(folder: Path, n: int) -> Path:
    secret = folder / "secret.bin"
    secret.write_bytes((SECRET * (n // len(SECRET) + 1))[:n])
    return secret


def _external_storage(path: Path) -> None:
    def act(f):
        shape, n = f["images"].shape, int(np.prod(f["images"].shape))
        _replace(f, "images", shape=shape, dtype="u1", external=[(str(_secret(path.parent, n)), 0, n)])
    _edit(path, act)


def _secret_h5(folder: Path, shape: tuple[int, ...]) -> Path:
    """``other.h5`` whose ``/data`` (resizable, chunked, uint8 of ``shape``) holds the secret bytes."""
    import h5py

    other = folder / "other.h5"
    data = np.frombuffer(_secret(folder, int(np.prod(shape))).read_bytes(), np.uint8).reshape(shape)
    with h5py.File(other, "w") as g:
        g.create_dataset("data", data=data, maxshape=(None,) * len(shape), chunks=(4, 8, 8))
    return other


def _virtual(path: Path) -> None:
    import h5py

    def act(f):
        shape = f["images"].shape
        layout = h5py.VirtualLayout(shape=shape, dtype="u1")
        layout[:] = h5py.VirtualSource(str(_secret_h5(path.parent, shape)), "data", shape=shape)
        del f["images"]
        f.create_virtual_dataset("images", layout, fillvalue=0)
    _edit(path, act)


def _external_link(path: Path) -> None:
    import h5py

    def act(f):
        other = _secret_h5(path.parent, f["images"].shape)
        del f["images"]
        f["images"] = h5py.ExternalLink(str(other), "/data")
    _edit(path, act)


def _huge_shape(path: Path) -> None:
    # the arrays really are declared that large (resizable, unallocated), so only the size cap stops a read
    def act(f):
        for name in ("images", "masks"):
            f[name].resize((max(f[name].shape[0], 72), 65536, 65536))
    _edit(path, act)
    _set_row(path, "b", z0=8, shape=(64, 65536, 65536))


def _soft_link(path: Path) -> None:
    import h5py

    def act(f):
        del f["masks"]
        f["masks"] = h5py.SoftLink("/images")
    _edit(path, act)


def _index_with_other_fields(path: Path) -> None:
    from dsbprep.store import INDEX_DTYPE

    def act(f):
        old = f["index"][:]
        wider = np.dtype(INDEX_DTYPE.descr + [("extra", "i8")])
        new = np.zeros(len(old), wider)
        for name in INDEX_DTYPE.names:
            new[name] = old[name]
        _replace(f, "index", data=new, maxshape=(None,), chunks=(64,))
    _edit(path, act)


#: Class -> (what it breaks: "file", "row" of case b, or "meta" of case b; the field the
#: messages must name; the mutation).
HOSTILE = {
    "negative z0": ("row", "z0", lambda p: _set_row(p, "b", z0=-4)),
    "z0 past the end": ("row", "z0", lambda p: _set_row(p, "b", z0=2**62)),
    "shape larger than the arrays": ("row", "shape", lambda p: _set_row(p, "b", shape=(3, 40, 6))),
    "box range outside /boxes": ("row", "n_boxes", lambda p: _set_row(p, "b", boxes_start=10**6)),
    "meta range outside /meta": ("row", "meta_len", lambda p: _set_row(p, "b", meta_start=2**40, meta_len=10)),
    "case id not UTF-8": ("row", "case_id", lambda p: _set_row(p, "b", case_id=b"\xff\xfeb")),
    "shape 64 x 65536 x 65536": ("row", "shape", _huge_shape),
    "metadata not an object": ("meta", "meta", lambda p: _append_meta(p, "b", b"[1, 2, 3]")),
    "metadata 200,000 levels deep": ("meta", "meta",
                                     lambda p: _append_meta(p, "b", b"[" * 200_000 + b"]" * 200_000)),
    "missing /index": ("file", "/index", lambda p: _edit(p, lambda f: f.__delitem__("index"))),
    "missing kind attribute": ("file", "attribute kind", lambda p: _edit(p, lambda f: f.attrs.__delitem__("kind"))),
    "2-D /images": ("file", "/images", lambda p: _edit(p, lambda f: _replace(f, "images", data=np.zeros((16, 14), "u1")))),
    "index with other fields": ("file", "/index", _index_with_other_fields),
    "index of 2**40 rows": ("file", "/index", lambda p: _edit(p, lambda f: f["index"].resize((2**40,)))),
    "external storage": ("file", "/images", _external_storage),
    "virtual dataset": ("file", "/images", _virtual),
    "external link": ("file", "/images", _external_link),
    "soft link": ("file", "/masks", _soft_link),
    "unavailable compression filter": ("file", "/masks", lambda p: _edit(p, lambda f: _replace(
        f, "masks", shape=f["masks"].shape, dtype="u1", chunks=(4, 8, 8), compression=32099,
        allow_unknown_filter=True))),
}
