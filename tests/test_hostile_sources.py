"""Hostile inputs of the 2-D sources: link files that point outside, CSV fields and bytes
that break Python's csv reader (issue 16's "smaller ones").

Each case is made by the test; each must end in a one-line :class:`MaskSourceError`
that names the file and the row, never in a traceback from ``csv`` or a read outside
the data folder.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from dsbprep.build import main as build_main
from dsbprep.errors import MaskSourceError
from dsbprep.sources.contours import discover_contour_cases
from dsbprep.sources.rle import MAX_RLE_FIELD_BYTES, read_rle_csv, rle_decode, rle_encode

PATIENT = "SCD0000101"
ORIGINAL = "SC-HF-I-1"


def _contour_folder(root, sunnybrook_dir, link_rows: str):
    """A Sunnybrook-layout folder with one real patient and the given link rows."""
    (root / "dicoms").mkdir(parents=True)
    (root / "dicoms" / PATIENT).symlink_to(sunnybrook_dir / "dicoms" / PATIENT)
    (root / "contourfiles").mkdir()
    (root / "contourfiles" / ORIGINAL).symlink_to(sunnybrook_dir / "contourfiles" / ORIGINAL)
    (root / "link.csv").write_text("patient_id,original_id\n" + link_rows)
    return root


def test_link_file_with_plain_names_still_works(tmp_path, sunnybrook_dir):
    root = _contour_folder(tmp_path / "data", sunnybrook_dir, f"{PATIENT},{ORIGINAL}\n")
    tasks = discover_contour_cases(root)
    assert tasks and all(t.case_id.startswith(PATIENT) for t in tasks)


@pytest.mark.parametrize(
    "row, column",
    [
        (f"../outside,{ORIGINAL}", "patient_id"),
        (f"{PATIENT},../../outside", "original_id"),
        (f"{PATIENT},/etc", "original_id"),
        (f"dicoms/../../outside,{ORIGINAL}", "patient_id"),
        (f"..,{ORIGINAL}", "patient_id"),
    ],
)
def test_link_file_entries_cannot_leave_the_data_folder(tmp_path, sunnybrook_dir, row, column):
    # a real patient folder outside the data directory, reachable through '..'
    outside = tmp_path / "outside"
    shutil.copytree(sunnybrook_dir / "dicoms" / PATIENT, outside, dirs_exist_ok=True)
    root = _contour_folder(tmp_path / "data", sunnybrook_dir, row + "\n")
    with pytest.raises(MaskSourceError, match=rf"link\.csv: row 2: {column} .* is not a folder name"):
        discover_contour_cases(root)


def test_link_file_that_is_not_text_is_a_clear_error(tmp_path, sunnybrook_dir):
    root = _contour_folder(tmp_path / "data", sunnybrook_dir, "")
    (root / "link.csv").write_bytes(b"patient_id,original_id\n\xff\xfe\x00bad,\x00row\n")
    with pytest.raises(MaskSourceError, match="link.csv: cannot read the link file"):
        discover_contour_cases(root)


def test_build_cli_reports_a_bad_link_file_in_one_line(tmp_path, sunnybrook_dir, capsys):
    root = _contour_folder(tmp_path / "data", sunnybrook_dir, f"{PATIENT},/etc\n")
    code = build_main(
        ["--source", "contours", "--data_directory", str(root),
         "--output_filename", str(tmp_path / "o.h5"), "--no-progress", "--workers", "1"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "is not a folder name inside the data directory" in err and "Traceback" not in err


def _striped_mask(shape=(1024, 1024), period=3):
    """A legal mask whose RLE is long: every third column-major pixel set."""
    flat = np.zeros(shape[0] * shape[1], np.uint8)
    flat[::period] = 1
    return flat.reshape(shape[1], shape[0]).T


def test_rle_field_longer_than_csv_default_is_read(tmp_path):
    mask = _striped_mask()
    rle = rle_encode(mask)
    assert len(rle) > 128 * 1024  # over Python's default csv.field_size_limit
    path = tmp_path / "m.csv"
    path.write_text(f"ImageId,EncodedPixels\nimg,{rle}\n")
    rows = read_rle_csv(path)
    np.testing.assert_array_equal(rle_decode(rows["img"][0], mask.shape).astype(bool), mask.astype(bool))


def test_rle_field_over_the_cap_is_a_clear_error(tmp_path):
    path = tmp_path / "m.csv"
    with path.open("w") as fh:
        fh.write("ImageId,EncodedPixels\nok,1 2\nbomb,")
        fh.write("1 " * (MAX_RLE_FIELD_BYTES // 2 + 16))
        fh.write("\n")
    with pytest.raises(MaskSourceError, match=r"m\.csv: row 3: not a readable CSV row: field larger"):
        read_rle_csv(path)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"ImageId,EncodedPixels\na,1 2\n\xff\xfe,3 4\n", "not a readable CSV row"),
    ],
    ids=["not-utf8"],
)
def test_malformed_csv_bytes_are_clear_errors(tmp_path, data, message):
    path = tmp_path / "m.csv"
    path.write_bytes(data)
    with pytest.raises(MaskSourceError, match=message):
        read_rle_csv(path)


# --- a Deflated Explicit VR DICOM that inflates to gigabytes, in the RLE discovery pass ---

DEFLATED = "1.2.840.10008.1.2.1.99"
BOMB_INFLATED_BYTES = 2 * 2**30


def write_deflate_bomb(path, patient_id="BOMB", inflated=BOMB_INFLATED_BYTES):
    """Write a ~2 MB Deflated-Explicit-VR DICOM whose body inflates to ``inflated`` bytes.

    The body is a real small header (PatientID first) followed by an OB element of
    zeros. Identical deflate blocks ended with a full flush can be repeated, so the
    file is made in a fraction of a second.
    """
    import io
    import zlib

    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filewriter import write_dataset, write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    meta.TransferSyntaxUID = DEFLATED
    ds = Dataset()
    ds.PatientID = patient_id
    ds.Modality = "CR"
    body = io.BytesIO()
    fp = pydicom.filebase.DicomFileLike(body)
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    chunk = 16 * 2**20
    n = inflated // chunk
    # (0009,1010) OB, explicit VR long form: tag, 'OB', 2 reserved bytes, 4-byte length
    head = body.getvalue() + b"\x09\x00\x10\x10OB\x00\x00" + (n * chunk).to_bytes(4, "little")
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    with open(path, "wb") as fh:
        fh.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(pydicom.filebase.DicomFileLike(fh), meta, enforce_standard=True)
        fh.write(first)
        for _ in range(n):
            fh.write(block)
        fh.write(c.flush(zlib.Z_FINISH))
    return path


def _peak_rss_of(code: str) -> tuple[int, str]:
    """Run ``code`` in a fresh Python; return (its peak RSS in bytes, its stderr).

    The peak is the process's own ``VmHWM``: Linux folds the forking parent's peak into
    ``ru_maxrss`` at exec, so a large pytest process would show through it.
    """
    import subprocess
    import sys

    probe = (
        "import resource, sys\n" + code +
        "\nprint(int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]) * 1024, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return int(done.stderr.strip().splitlines()[-1]), done.stderr


def test_rle_discovery_does_not_inflate_a_deflate_bomb(tmp_path, siim_dir):
    root = tmp_path / "data"
    root.mkdir()
    good = next((siim_dir / "sample-data").glob("*.dcm"))
    shutil.copy(good, root / good.name)
    write_deflate_bomb(root / "bomb.dcm")
    assert (root / "bomb.dcm").stat().st_size < 8 * 2**20
    (root / "m.csv").write_text(f"ImageId,EncodedPixels\n{good.stem},-1\nbomb,-1\n")
    peak, _ = _peak_rss_of(
        "from dsbprep.sources.rle import discover_rle_cases\n"
        f"tasks = discover_rle_cases({str(root)!r})\n"
        "assert sorted(t.case_id for t in tasks) == sorted(['bomb', " + repr(good.stem) + "])\n"
    )
    assert peak < 1 * 2**30, f"discovery peaked at {peak / 2**20:.0f} MiB"
