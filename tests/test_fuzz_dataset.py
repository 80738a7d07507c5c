"""Untrusted dataset files: hypothesis mutates a small valid file, then every command reads it.

The mutations are those of issue 16: index row fields (every field, with boundary
values), file attributes (deleted or set to odd values of any type), dataset shapes
(resized to nothing, a little, or 2**40), and the metadata bytes. Whatever the file,
verify, export, report and the loader (``tests/hostile.py``) must end in a dsbprep
error or correct data: the exported arrays equal the original cases byte for byte,
loaded patches hold only their own case's values or padding, no traceback escapes,
and resident memory stays bounded. The readers run with a 16 MiB case limit
(``DEFAULT_LIMITS`` replaced), so a declared size that got allocated would show in the
memory figure. Runs are derandomized and bounded, as in tests/test_fuzz.py.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hostile import make_base, run_commands
from hypothesis import given, reject, settings
from hypothesis import strategies as st
from test_fuzz import FUZZ, PeakRSS

from dsbprep.store import INDEX_DTYPE, ReadLimits
from dsbprep.store import format as store_format

#: Most resident memory the fuzz run may add (MiB); a case may allocate at most 2 x 16 MiB.
MAX_RSS_GROWTH_MIB = 300
#: The readers' limits during the fuzz run (a case is at most 16 MiB of image and mask).
FUZZ_LIMITS = ReadLimits(max_case_bytes=16 * 2**20)
_INTS = [-(2**63), -(2**31), -5, -1, 0, 1, 2, 3, 4, 8, 12, 14, 16, 40, 2**12, 2**31 - 1, 2**40, 2**62]
_FLOATS = [float("nan"), float("inf"), -1.0, 0.0, 0.5, 1e300]
_SIZES = [0, 1, 3, 7, 16, 64, 2**21, 2**40]
#: Largest /meta the harness rewrites as a whole (bytes; the base file's is ~5 kB).
_META_EDIT_MAX = 2**20
_ATTRS = ["format", "format_version", "kind", "pad_value", "chunks", "compression", "box_columns"]
_ATTR_VALUES = st.one_of(
    st.none(),  # delete it
    st.sampled_from(["dsbprep", "1.0", "9.0", "volume", "slices", "", "x" * 300]),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True),
    st.binary(max_size=16),
    st.lists(st.integers(-5, 5), max_size=4),
)

row_mutation = st.tuples(st.just("row"), st.integers(0, 2), st.sampled_from(INDEX_DTYPE.names),
                         st.integers(0, 8), st.sampled_from(_INTS), st.binary(max_size=130))
attr_mutation = st.tuples(st.just("attr"), st.sampled_from(_ATTRS), _ATTR_VALUES)
shape_mutation = st.tuples(st.just("shape"), st.sampled_from(["images", "masks", "boxes", "meta", "index"]),
                           st.integers(0, 2), st.sampled_from(_SIZES))
meta_mutation = st.tuples(st.just("meta"), st.integers(0, 6000), st.sampled_from(["set", "xor", "cut"]),
                          st.binary(min_size=1, max_size=8))
mutations = st.lists(st.one_of(row_mutation, attr_mutation, shape_mutation, meta_mutation),
                     min_size=1, max_size=4)


def _mutate_row(f: h5py.File, row: int, name: str, element: int, value: int, raw: bytes) -> None:
    index = f["index"][:3]  # the base file's rows (the dataset may have been resized to 2**40)
    if row >= len(index):
        return
    column = index[name]
    kind = INDEX_DTYPE[name].base.kind
    new = raw if kind == "S" else _FLOATS[value % len(_FLOATS)] if kind == "f" else value
    if kind == "i":
        info = np.iinfo(INDEX_DTYPE[name].base)
        new = int(np.clip(value, info.min, info.max))
    flat = column.reshape(len(index), -1)
    flat[row, element % flat.shape[1]] = new
    index[name] = flat.reshape(column.shape)
    f["index"][: len(index)] = index


def _mutate_meta(f: h5py.File, pos: int, op: str, chunk: bytes) -> None:
    if f["meta"].shape[0] > _META_EDIT_MAX:
        return  # resized to 2**21 or more by an earlier mutation: its bytes are the fill value
    meta = bytearray(f["meta"][:].tobytes())
    pos = min(pos, len(meta))
    if op == "set":
        meta[pos : pos + len(chunk)] = chunk
    elif op == "xor" and pos < len(meta):
        meta[pos] ^= chunk[0] or 1
    elif op == "cut":
        del meta[pos:]
    f["meta"].resize(len(meta), axis=0)
    f["meta"][:] = np.frombuffer(bytes(meta), np.uint8)


def _apply(path: Path, muts: list[tuple]) -> None:
    with h5py.File(path, "a") as f:
        for mut in muts:
            if mut[0] == "row":
                _mutate_row(f, *mut[1:])
            elif mut[0] == "attr":
                _, name, value = mut
                if value is None:
                    f.attrs.pop(name, None)
                else:
                    f.attrs[name] = value
            elif mut[0] == "shape":
                _, name, axis, size = mut
                ds = f[name]
                if axis >= ds.ndim or (name == "boxes" and axis == 1):
                    continue
                ds.resize(size, axis=axis)
            else:
                _mutate_meta(f, *mut[1:])


@pytest.fixture(scope="module")
def base():
    folder = Path(tempfile.mkdtemp(prefix="dsbprep-fuzz-ds-"))
    yield make_base(folder / "base.h5")
    shutil.rmtree(folder, ignore_errors=True)


COUNTS = {"inputs": 0, "refused": 0, "case-level": 0, "clean": 0}


@pytest.mark.timeout(600)
def test_fuzz_dataset_files(base, monkeypatch):
    monkeypatch.setattr(store_format, "DEFAULT_LIMITS", FUZZ_LIMITS)

    @settings(FUZZ, max_examples=100)
    @given(muts=mutations)
    def run(muts):
        work = Path(tempfile.mkdtemp(prefix="dsbprep-fuzz-case-"))
        try:
            path = work / "d.h5"
            shutil.copy(base, path)
            try:
                _apply(path, muts)
            except (OSError, ValueError, TypeError, KeyError):
                reject()  # h5py refused to write this mutation: nothing to read
            said = run_commands(path, work)  # asserts correct data for whatever was read
            assert said["verify"].rc in (0, 1, 2)
            assert said["export"].rc in (0, 1) and said["report"].rc in (0, 2)
            if said["verify"].rc == 2:
                assert said["export"].rc == 1 and said["report"].rc == 2 and said["loader"].rc == 1
            COUNTS["inputs"] += 1
            COUNTS["refused" if said["verify"].rc == 2 else "case-level" if said["verify"].rc else "clean"] += 1
        finally:
            shutil.rmtree(work, ignore_errors=True)

    with PeakRSS() as rss:
        run()
    print(f"\nRELIABILITY dataset fuzz: {COUNTS}, peak RSS growth {rss.growth_mib:.0f} MiB")
    assert rss.growth_mib < MAX_RSS_GROWTH_MIB
    assert COUNTS["refused"] and COUNTS["case-level"]  # both paths were exercised
