"""Hostile input files (issue 16, input side): bombs, data files outside the case, symlink loops.

Every file is made by the test. Decompression bombs are built by repeating one compressed
block (deflate: full-flush pieces; bzip2: one 46 MB block of zeros, bit-copied), so a
1-2 MB file inflating to 2 GiB costs a second to make. Each bomb is read in a fresh
Python process that prints its own peak memory (``VmHWM``; ``ru_maxrss`` would carry over
the forking pytest process's peak through exec): it must stay under 1 GB.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from dsbprep.errors import DicomSeriesError, VolumeFileError
from dsbprep.io.dicom import load_scan, read_dataset
from dsbprep.io.headers import check_volume_file
from dsbprep.io.nrrd import read_nrrd_volume
from dsbprep.io.volume import read_volume
from dsbprep.sources.lung import discover_patients
from dsbprep.sources.nrrd import discover_nrrd_cases

REPO = Path(__file__).resolve().parents[1]
#: What a bomb inflates to, and the peak memory a process reading one may reach.
BOMB_BYTES = 2 * 2**30
MAX_RSS_BYTES = 2**30
_PIECE = 16 * 2**20


# --- bomb makers ----------------------------------------------------------------------------


def deflate_bomb(head: bytes, zeros: int, wbits: int = -15) -> bytes:
    """A deflate (raw, zlib or gzip by ``wbits``) stream of ``head`` then ``zeros`` zero bytes.

    (The zlib/gzip checksum at the end is wrong: it never gets checked, a bounded reader
    stops long before.)
    """
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    out = [c.compress(head), c.flush(zlib.Z_FULL_FLUSH)]
    piece = c.compress(bytes(_PIECE)) + c.flush(zlib.Z_FULL_FLUSH)  # the same bytes every time
    assert zeros % _PIECE == 0
    out += [piece] * (zeros // _PIECE)
    out.append(c.flush())
    return b"".join(out)


def bzip2_bomb(blocks: int) -> bytes:
    """A single bzip2 stream of ``blocks`` identical blocks of 45,899,235 zero bytes."""
    c = bz2.BZ2Compressor(9)
    data = b"".join(c.compress(bytes(2**20)) for _ in range(50)) + c.flush()
    bits, n = int.from_bytes(data, "big"), len(data) * 8

    def find(magic: int, start: int) -> int:
        return next(o for o in range(start, n - 47) if (bits >> (n - o - 48)) & (2**48 - 1) == magic)

    b1 = find(0x314159265359, 32)
    b2 = find(0x314159265359, b1 + 48)
    length = b2 - b1
    block = (bits >> (n - b2)) & ((1 << length) - 1)
    crc = (block >> (length - 80)) & 0xFFFFFFFF
    acc, size, combined = int.from_bytes(b"BZh9", "big"), 32, 0
    for _ in range(blocks):
        acc, size = (acc << length) | block, size + length
        combined = (((combined << 1) | (combined >> 31)) & 0xFFFFFFFF) ^ crc
    acc, size = (((acc << 48) | 0x177245385090) << 32) | combined, size + 80
    pad = -size % 8
    return (acc << pad).to_bytes((size + pad) // 8, "big")


def dicom_bomb(template: Path, path: Path, z: float, zeros: int = BOMB_BYTES) -> Path:
    """A Deflated Explicit VR CT slice whose Pixel Data inflate to ``zeros`` bytes."""
    ds = pydicom.dcmread(template)
    del ds.PixelData
    ds.SOPInstanceUID = generate_uid()
    ds.ImagePositionPatient = [-166.0, -171.7, z]
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    head = body.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", zeros)
    meta = pydicom.dataset.FileMetaDataset(ds.file_meta)
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(bytes(128) + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=False)
    path.write_bytes(out.getvalue() + deflate_bomb(head, zeros))
    return path


def run_measured(code: str) -> dict:
    """Run ``code`` (which sets ``result``, a dict) in a fresh process; add its peak RSS."""
    script = (
        "import json, resource\n" + code +
        "\nresult['max_rss'] = int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]) * 1024\n"
        "print(json.dumps(result))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"peak memory of the reading process: {result['max_rss'] / 2**20:.0f} MiB")  # -s shows it
    assert result["max_rss"] < MAX_RSS_BYTES, result
    return result


def _nrrd_header(sizes=(64, 64, 64), encoding="raw", data_file=None, kind="uchar") -> str:
    text = (f"NRRD0004\ntype: {kind}\ndimension: 3\nsizes: {' '.join(map(str, sizes))}\n"
            "space: left-posterior-superior\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n"
            f"space origin: (0,0,0)\nendian: little\nencoding: {encoding}\n")
    return text + (f"data file: {data_file}\n" if data_file else "\n")


# --- the bomb makers make what they say ----------------------------------------------------


def test_bomb_makers_are_real_bombs():
    small = deflate_bomb(b"head", 3 * _PIECE)
    assert zlib.decompress(small, -15) == b"head" + bytes(3 * _PIECE)
    two = bzip2_bomb(2)
    assert bz2.decompress(two) == bytes(2 * 45_899_235)
    assert len(bzip2_bomb(47)) < 2000  # 47 blocks: 2.0 GiB


# --- DICOM: Deflated Explicit VR Little Endian -------------------------------------------


@pytest.fixture(scope="module")
def dicom_bombs(lidc_dir, tmp_path_factory) -> Path:
    """Three 512 x 512 CT slices (~2 MB each) that inflate to 2 GiB each."""
    folder = tmp_path_factory.mktemp("deflate-bomb") / "BOMB-PATIENT"
    folder.mkdir()
    template = sorted(lidc_dir.rglob("*.dcm"))[0]
    for i in range(3):
        dicom_bomb(template, folder / f"{i}.dcm", z=-340.0 + 2.5 * i)
    return folder


def test_deflated_bomb_fails_with_bounded_memory(dicom_bombs):
    sizes = [p.stat().st_size for p in dicom_bombs.iterdir()]
    assert max(sizes) < 3 * 2**20, sizes  # a few MB on disk ...
    result = run_measured(
        "from dsbprep.io.dicom import load_scan, read_dataset\n"
        "from dsbprep.errors import DicomSeriesError\n"
        "result = {}\n"
        f"folder = {str(dicom_bombs)!r}\n"
        "try:\n    load_scan(folder)\nexcept DicomSeriesError as err:\n    result['scan'] = str(err)\n"
        "try:\n    read_dataset(folder + '/0.dcm')\nexcept DicomSeriesError as err:\n"
        "    result['file'] = str(err)\n"
        "result['header_rows'] = int(read_dataset(folder + '/0.dcm', stop_before_pixels=True).Rows)\n"
    )
    # ... 2 GiB each inflated: the load fails naming the file and the cap, memory stays small
    assert "files cannot be decoded" in result["scan"] and "inflate past" in result["scan"]
    assert "0.dcm" in result["file"] and "inflate past" in result["file"]
    assert result["header_rows"] == 512  # the header alone reads fine, from its first 16 MiB


def test_deflated_file_reads_normally(lidc_dir, tmp_path):
    """A legitimate Deflated Explicit VR series loads like the original."""
    src = sorted(lidc_dir.rglob("*.dcm"))[:3]
    (tmp_path / "deflated").mkdir()
    (tmp_path / "original").mkdir()
    for f in src:
        ds = pydicom.dcmread(f)
        ds.save_as(tmp_path / "original" / f.name)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(tmp_path / "deflated" / f.name, enforce_file_format=True)
    scan = load_scan(tmp_path / "deflated")
    np.testing.assert_array_equal(scan.hu, load_scan(tmp_path / "original").hu)
    first = tmp_path / "deflated" / src[0].name
    assert read_dataset(first).pixel_array.shape == (512, 512)
    with pytest.raises(DicomSeriesError, match=r"\.dcm: .*inflate past 1000 bytes"):
        read_dataset(first, max_inflated_bytes=1000)


# --- detached data: only a regular file inside the case folder ----------------------------


@pytest.mark.parametrize(
    ("data_file", "reason"),
    [
        ("/dev/zero", "must be a relative path inside"),
        ("/etc/passwd", "must be a relative path inside"),
        ("../secret.raw", "must be a relative path inside"),
        ("link.raw", "resolves to"),
        ("fifo.raw", "not a regular file"),
        ("missing.raw", "No such file"),
        ("data.%03d.raw 1 3 1", "file lists and patterns"),
        ("LIST", "file lists and patterns"),
    ],
)
def test_detached_data_outside_the_case_is_refused(tmp_path, data_file, reason):
    case = tmp_path / "case"
    case.mkdir()
    (tmp_path / "secret.raw").write_bytes(bytes(64**3))
    (case / "link.raw").symlink_to(tmp_path / "secret.raw")
    os.mkfifo(case / "fifo.raw")
    for name, text in (
        ("image.nhdr", _nrrd_header(encoding="gzip", data_file=data_file)),
        ("image.mhd", "NDims = 3\nDimSize = 64 64 64\nElementType = MET_UCHAR\n"
                      f"ElementDataFile = {data_file}\n"),
    ):
        (case / name).write_text(text)
        with pytest.raises(VolumeFileError, match=reason):
            read_volume(case / name)


def test_symlink_inside_the_case_folder_is_fine(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "v.raw").write_bytes(np.arange(64, dtype=np.uint8).tobytes())
    (tmp_path / "v-link.raw").symlink_to(tmp_path / "data" / "v.raw")
    (tmp_path / "v.nhdr").write_text(_nrrd_header((4, 4, 4), data_file="v-link.raw"))
    assert read_nrrd_volume(tmp_path / "v.nhdr").array.ravel().tolist() == list(range(64))


# --- compressed data: read up to the declared size and no further -------------------------


@pytest.fixture(scope="module")
def volume_bombs(tmp_path_factory) -> Path:
    """NRRD bzip2 / gzip-from-/dev/zero, MetaImage zraw and .nii.gz, each small on disk."""
    root = tmp_path_factory.mktemp("volume-bombs")
    (root / "bz2.nrrd").write_bytes(_nrrd_header(encoding="bzip2").encode() + bzip2_bomb(47))
    (root / "gz.nhdr").write_text(_nrrd_header(encoding="gzip", data_file="gz.raw.gz"))
    (root / "gz.raw.gz").write_bytes(deflate_bomb(b"", BOMB_BYTES, wbits=31))
    (root / "zraw.mhd").write_text("NDims = 3\nDimSize = 64 64 64\nElementType = MET_UCHAR\n"
                                   "CompressedData = True\nElementDataFile = zraw.zraw\n")
    (root / "zraw.zraw").write_bytes(deflate_bomb(b"", BOMB_BYTES, wbits=15))
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, 64, 64, 64, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 2, 8)  # uint8
    struct.pack_into("<f", header, 108, 352.0)
    struct.pack_into("<4s", header, 344, b"n+1\0")
    (root / "nii.nii.gz").write_bytes(deflate_bomb(bytes(header), BOMB_BYTES, wbits=31))
    # a header that declares the 2 GiB honestly: refused by the voxel cap before any read
    (root / "honest.nrrd").write_bytes(
        _nrrd_header((2048, 1024, 1024), encoding="bzip2").encode() + bzip2_bomb(47)
    )
    return root


def test_compressed_bombs_fail_with_bounded_memory(volume_bombs):
    sizes = {p.name: p.stat().st_size for p in volume_bombs.iterdir()}
    assert max(sizes.values()) < 3 * 2**20, sizes
    result = run_measured(
        "from dsbprep.io.volume import read_volume\n"
        "from dsbprep.errors import VolumeFileError\n"
        "result = {}\n"
        f"root = {str(volume_bombs)!r}\n"
        "for name in ('bz2.nrrd', 'gz.nhdr', 'zraw.mhd', 'nii.nii.gz'):\n"
        "    try:\n        read_volume(root + '/' + name)\n"
        "    except VolumeFileError as err:\n        result[name] = str(err)\n"
        "try:\n    read_volume(root + '/honest.nrrd', max_voxels=10**8)\n"
        "except VolumeFileError as err:\n    result['honest'] = str(err)\n"
    )
    for name in ("bz2.nrrd", "gz.nhdr", "zraw.mhd"):
        assert "inflate past 262144 bytes" in result[name], result
    assert "inflate past 262496 bytes" in result["nii.nii.gz"]  # header + voxels
    assert "above max_voxels=100000000" in result["honest"]


def test_short_compressed_and_raw_data_are_truncated(tmp_path):
    (tmp_path / "short.nrrd").write_bytes(
        _nrrd_header((8, 8, 8), encoding="gzip").encode() + gzip.compress(bytes(100))
    )
    with pytest.raises(VolumeFileError, match="end after 100 bytes, the header declares 512"):
        read_volume(tmp_path / "short.nrrd")
    (tmp_path / "raw.nrrd").write_bytes(_nrrd_header((8, 8, 8)).encode() + bytes(500))
    with pytest.raises(VolumeFileError, match="truncated"):
        check_volume_file(tmp_path / "raw.nrrd", max_voxels=10**6)


# --- discovery does not follow symlink loops -----------------------------------------------


def test_symlink_loops_do_not_hang_discovery(tmp_path):
    case = tmp_path / "case1"
    case.mkdir()
    (case / "image.nrrd").write_bytes(_nrrd_header((4, 4, 4)).encode() + bytes(64))
    (case / "label.nrrd").write_bytes(_nrrd_header((4, 4, 4)).encode() + bytes(64))
    (case / "loop").symlink_to(case, target_is_directory=True)
    (case / "image-dir").mkdir()
    (case / "image-dir" / "up").symlink_to(tmp_path, target_is_directory=True)
    tasks = discover_nrrd_cases(tmp_path)
    assert [t.case_id for t in tasks] == ["case1"]
    tasks = discover_nrrd_cases(tmp_path, image_name="image-dir")  # a folder image with a loop
    assert [t.case_id for t in tasks] == ["case1"]
    assert {t.case_id for t in discover_patients(tmp_path)} == {"image", "label"}  # volume files
