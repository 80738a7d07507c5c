"""Untrusted input: fuzz the DICOM series loader, the RLE decoder and the contour parser.

Hypothesis mutates real files (three slices of the cip ct-64 series, a real
Sunnybrook contour file) and generates RLE strings. Whatever the input, only
dsbprep's own exceptions (``DsbprepError`` subclasses) may escape, nothing may
hang (``pytest.mark.timeout``), and no input may make the process allocate a
declared size: the peak resident memory during each test is measured. The runs
are derandomized (the same inputs every run, so CI is reproducible) and bounded
by ``max_examples``; docs/RELIABILITY.md gives the figures.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import psutil
import pydicom
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from dsbprep.dicom import load_scan
from dsbprep.errors import DicomSeriesError, DsbprepError, MaskSourceError
from dsbprep.sources.contours import contour_mask, read_contour
from dsbprep.sources.rle import rle_decode

#: Most resident memory a fuzz test may add (MiB): a 3-slice 64 x 64 series needs < 1 MiB, so a
#: declared size that got allocated (even 2**31 voxels = 4 GiB) would show far above this.
MAX_RSS_GROWTH_MIB = 300
#: Seconds between two samples of the resident memory.
_RSS_SAMPLE_S = 0.002
_MIB = 2**20
#: Bounded, reproducible runs: the same examples every run; a slow example is a failure.
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class PeakRSS:
    """Sample this process's resident memory in a thread; ``growth_mib`` is the peak increase."""

    def __enter__(self) -> PeakRSS:
        self._proc = psutil.Process()
        self.start = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(_RSS_SAMPLE_S)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start) / _MIB


@pytest.fixture(scope="module")
def slices(ct64_dir) -> list[bytes]:
    """Bytes of three consecutive real CT slices (9.4 KB each)."""
    return [(ct64_dir / f"IMG{k:04d}.dcm").read_bytes() for k in (30, 31, 32)]


@pytest.fixture(scope="module")
def scratch():
    folder = Path(tempfile.mkdtemp(prefix="dsbprep-fuzz-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _load(folder: Path, files: list[bytes]) -> None:
    """Write ``files`` as a series into a fresh ``folder`` and load it; only DsbprepError may escape."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for k, blob in enumerate(files):
        (folder / f"s{k}.dcm").write_bytes(blob)
    try:
        scan = load_scan(folder)
    except DicomSeriesError as err:
        assert str(folder) in str(err)  # the message names the folder
        return
    assert scan.hu.dtype == np.int16 and scan.hu.ndim == 3 and scan.hu.shape[0] >= 2
    assert all(s > 0 for s in scan.spacing)


_mutation = st.tuples(
    st.sampled_from(["set", "xor", "cut", "insert", "delete"]),
    st.integers(0, 9500),
    st.binary(min_size=1, max_size=16),
)


def _mutate(blob: bytes, mutations: list[tuple[str, int, bytes]]) -> bytes:
    data = bytearray(blob)
    for op, pos, chunk in mutations:
        pos = min(pos, len(data))
        if op == "set":
            data[pos : pos + len(chunk)] = chunk
        elif op == "xor" and pos < len(data):
            data[pos] ^= chunk[0] or 1
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = chunk
        elif op == "delete":
            del data[pos : pos + len(chunk)]
    return bytes(data)


FUZZ_COUNTS: dict[str, int] = {}


def _count(name: str) -> None:
    FUZZ_COUNTS[name] = FUZZ_COUNTS.get(name, 0) + 1


@pytest.mark.timeout(120)
def test_fuzz_dicom_bytes(slices, scratch):
    @settings(FUZZ, max_examples=2000)
    @given(
        which=st.integers(0, 2),
        mutations=st.lists(_mutation, min_size=1, max_size=6),
        second=st.booleans(),
    )
    def run(which, mutations, second):
        files = list(slices)
        files[which] = _mutate(files[which], mutations)
        if second:  # damage a second slice the same way
            files[(which + 1) % 3] = _mutate(files[(which + 1) % 3], mutations)
        _load(scratch / "bytes", files)
        _count("dicom bytes")

    with PeakRSS() as rss:
        run()
    assert rss.growth_mib < MAX_RSS_GROWTH_MIB


#: Header fields whose values decide sizes, layout and geometry, with hostile values.
_HOSTILE = {
    "Rows": st.sampled_from([0, 1, 3, 65535, 40000, 2**15]),
    "Columns": st.sampled_from([0, 1, 3, 65535, 40000, 2**15]),
    "BitsAllocated": st.sampled_from([0, 1, 7, 8, 12, 32, 64, 65535]),
    "BitsStored": st.sampled_from([0, 1, 16, 40, 65535]),
    "PixelRepresentation": st.sampled_from([0, 1, 2]),
    "SamplesPerPixel": st.sampled_from([0, 2, 3, 65535]),
    "NumberOfFrames": st.sampled_from(["0", "2", "100000", "-1"]),
    "PixelSpacing": st.sampled_from(
        [["0", "0"], ["-1", "1"], ["nan", "1"], ["1e308", "1e308"], ["1"]]
    ),
    "ImagePositionPatient": st.sampled_from(
        [["0", "0", "0"], ["nan", "0", "0"], ["inf", "1", "2"], ["1"]]
    ),
    "ImageOrientationPatient": st.sampled_from(
        [["0"] * 6, ["1", "0", "0", "1", "0", "0"], ["nan"] * 6]
    ),
    "RescaleSlope": st.sampled_from(["0", "1e30", "-1e30", "nan", "inf"]),
    "RescaleIntercept": st.sampled_from(["1e30", "-1e30", "nan"]),
    "SliceThickness": st.sampled_from(["0", "-3", "nan"]),
    "PixelPaddingValue": st.sampled_from([0, 65535, -32768]),
}


@pytest.mark.timeout(120)
def test_fuzz_dicom_header_values(slices, scratch):
    """Declared sizes and geometry set to hostile values (huge sizes must be refused before allocating)."""
    import io

    datasets = [pydicom.dcmread(io.BytesIO(b)) for b in slices]

    @settings(FUZZ, max_examples=600)
    @given(
        fields=st.dictionaries(
            st.sampled_from(sorted(_HOSTILE)), st.none(), min_size=1, max_size=4
        ),
        data=st.data(),
        on_all=st.booleans(),
    )
    def run(fields, data, on_all):
        values = {name: data.draw(_HOSTILE[name], label=name) for name in fields}
        files = []
        for k, ds in enumerate(datasets):
            ds = ds.copy()
            buf = io.BytesIO()
            try:
                with warnings.catch_warnings():  # pydicom warns about the invalid values we set
                    warnings.simplefilter("ignore")
                    if on_all or k == 1:
                        for name, value in values.items():
                            if name == "PixelPaddingValue":  # US or SS: say which
                                ds.add_new(0x00280120, "SS" if value < 0 else "US", value)
                            else:
                                setattr(ds, name, value)
                    ds.save_as(buf, enforce_file_format=True)
            except (TypeError, ValueError, OverflowError, struct.error):
                reject()  # pydicom itself cannot encode this value: not an input we can make
            files.append(buf.getvalue())
        _load(scratch / "header", files)
        _count("dicom header values")

    with PeakRSS() as rss:
        run()
    assert rss.growth_mib < MAX_RSS_GROWTH_MIB


_RLE_TOKENS = st.one_of(
    st.integers(-5, 300).map(str),
    st.integers(-(2**64), 2**64).map(str),
    st.sampled_from([2**31, 2**62, 2**63 - 1, 2**63, -(2**63)]).map(str),  # int64 edges
    st.sampled_from(["", "-1", " ", "\n", "1.5", "1e3", "0x10", "nan", "٣", "+7", "--1"]),
)


@pytest.mark.timeout(120)
def test_fuzz_rle_decode():
    @settings(FUZZ, max_examples=3000)
    @given(
        tokens=st.lists(_RLE_TOKENS, max_size=12),
        sep=st.sampled_from([" ", "  ", "\t", ","]),
        shape=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    )
    def run(tokens, sep, shape):
        text = sep.join(tokens)
        try:
            mask = rle_decode(text, shape)
        except MaskSourceError:
            _count("rle")
            return
        assert mask.shape == shape and mask.dtype == bool
        _count("rle")

    with PeakRSS() as rss:
        run()
    assert rss.growth_mib < MAX_RSS_GROWTH_MIB


@pytest.fixture(scope="module")
def contour_text(sunnybrook_dir) -> bytes:
    path = next((sunnybrook_dir / "contourfiles").rglob("*-icontour-manual.txt"))
    return path.read_bytes()


@pytest.mark.timeout(120)
def test_fuzz_contour_parser(contour_text, scratch):
    path = scratch / "IM-0001-0048-icontour-manual.txt"

    @settings(FUZZ, max_examples=1500)
    @given(
        mutations=st.lists(_mutation, max_size=6),
        extra=st.sampled_from(
            [
                b"",
                b"nan 1\n",
                b"1e999 2\n",
                b"1 2 3\n",
                b"\xff\xfe\n",
                b"-1e308 1e308\n",
                b"\x00",
                b"1_0 2\n",
                b"inf -inf\n",
            ]
        ),
    )
    def run(mutations, extra):
        path.write_bytes(_mutate(contour_text, mutations) + extra)
        try:
            points = read_contour(path)
            contour_mask(points, (256, 256), name=path.name)
        except MaskSourceError as err:
            assert path.name in str(err)
        _count("contours")

    with PeakRSS() as rss:
        run()
    assert rss.growth_mib < MAX_RSS_GROWTH_MIB


def test_only_dsbprep_errors_are_expected():
    # the fuzz tests above accept exactly these types: each is a DsbprepError
    assert issubclass(DicomSeriesError, DsbprepError) and issubclass(MaskSourceError, DsbprepError)


def test_report_fuzz_counts(capsys):
    # runs last in this file: the number of inputs each fuzz test ran (for docs/RELIABILITY.md)
    with capsys.disabled():
        print(f"\nRELIABILITY fuzz inputs: {FUZZ_COUNTS}")
