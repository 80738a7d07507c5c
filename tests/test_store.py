"""The HDF5 dataset format: round trips, resume, crash safety, concurrent readers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from dsbprep.errors import DatasetFormatError
from dsbprep.store import (
    BOX_COLUMNS,
    CaseData,
    DatasetWriter,
    case_checksum,
    open_dataset,
)


def _case(case_id: str, shape=(5, 9, 11), seed=0, dtype=np.int16) -> CaseData:
    rng = np.random.default_rng(seed)
    image = rng.integers(-1000, 1000, size=shape).astype(dtype)
    mask = (rng.random(shape) > 0.5).astype(np.uint8) * 2
    boxes = np.array([[1, 2, 3, 2, 2, 2, 5.5, 3]], np.float32)
    return CaseData(case_id, image, mask, spacing=(2.5, 0.7, 0.7), origin=(-340.0, -10.0, -20.0),
                    boxes=boxes, source_hash=f"h{seed}", meta={"series_uid": f"1.2.{seed}"})


@pytest.mark.parametrize("compression", ["none", "gzip", "lzf", "blosc-lz4", "blosc-zstd"])
def test_round_trip_every_compressor(tmp_path, compression):
    path = tmp_path / "d.h5"
    cases = [_case("a", (5, 9, 11), 1), _case("b", (3, 14, 6), 2), _case("é-ü", (1, 4, 4), 3)]
    with DatasetWriter(path, image_dtype="int16", chunks=(4, 8, 8), compression=compression,
                       pad_value=-1024) as w:
        for c in cases:
            w.append(c)
    with open_dataset(path) as ds:
        assert ds.case_ids == ["a", "b", "é-ü"]
        assert len(ds) == 3
        for c in cases:
            rec = ds[c.case_id]
            np.testing.assert_array_equal(rec.image, c.image)
            np.testing.assert_array_equal(rec.mask, c.mask)
            np.testing.assert_array_equal(rec.boxes, c.boxes)
            assert rec.spacing == (2.5, 0.7, 0.7)
            assert rec.origin == (-340.0, -10.0, -20.0)
            assert rec.meta["series_uid"] == c.meta["series_uid"]
            assert rec.checksum == case_checksum(c.image, c.mask)
        # cases start on chunk boundaries along z, padding uses the file's pad value
        assert list(ds.index["z0"]) == [0, 8, 12]
        assert ds.file["images"][5, 0, 0] == -1024
        assert ds.attrs["format_version"] == "2.0"  # issue 15: boxes gained a column
        assert json.loads(ds.attrs["box_columns"]) == list(BOX_COLUMNS)


def test_read_region_pads_outside(tmp_path):
    path = tmp_path / "d.h5"
    c = _case("a", (6, 7, 8))
    with DatasetWriter(path, image_dtype="int16", chunks=(4, 4, 4), pad_value=-3) as w:
        w.append(c)
    with open_dataset(path) as ds:
        img, msk = ds.read_region("a", (-2, 3, 5), (4, 6, 6))
    assert img.shape == (4, 6, 6) and msk.shape == (4, 6, 6)
    np.testing.assert_array_equal(img[2:, :4, :3], c.image[0:2, 3:7, 5:8])
    np.testing.assert_array_equal(msk[2:, :4, :3], c.mask[0:2, 3:7, 5:8])
    assert (img[:2] == -3).all() and (msk[:2] == 0).all()
    assert (img[2:, 4:] == -3).all() and (img[2:, :, 3:] == -3).all()


def test_latest_row_wins_and_failures_listed(tmp_path):
    path = tmp_path / "d.h5"
    with DatasetWriter(path, image_dtype="int16", chunks=(4, 8, 8)) as w:
        w.append(_case("a", seed=1))
        w.append_failure("b", "b: file x.dcm truncated", source_hash="hb")
        w.append(_case("a", seed=5))  # rebuild supersedes
        assert w.done() == {"a": "h5"}
    with open_dataset(path) as ds:
        assert ds.case_ids == ["a"]
        assert ds.failures == {"b": "b: file x.dcm truncated"}
        np.testing.assert_array_equal(ds["a"].image, _case("a", seed=5).image)


def test_second_writer_is_refused(tmp_path):
    path = tmp_path / "d.h5"
    with DatasetWriter(path, image_dtype="int16"), pytest.raises(DatasetFormatError, match="another dsbprep build"):
        DatasetWriter(path, image_dtype="int16")


def test_newer_format_version_is_a_clear_error(tmp_path):
    path = tmp_path / "d.h5"
    with DatasetWriter(path, image_dtype="int16") as w:
        w.append(_case("a"))
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = "7.0"
    with pytest.raises(DatasetFormatError, match="format version 7.0 by a newer dsbprep"):
        open_dataset(path)


def test_not_a_dsbprep_file(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = 1
    with pytest.raises(DatasetFormatError, match="not a dsbprep dataset"):
        open_dataset(path)


_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from dsbprep.store import CaseData, DatasetWriter
    path, n_good = sys.argv[1], int(sys.argv[2])
    w = DatasetWriter(path, image_dtype="int16", chunks=(4, 8, 8))
    rng = np.random.default_rng(0)
    for i in range(n_good):
        img = rng.integers(-900, 900, (6, 10, 10)).astype(np.int16)
        w.append(CaseData(f"c{i}", img, (img > 0).astype(np.uint8), source_hash=f"h{i}"))
    # start a big case and die half-way through writing its voxels
    images = w.file["images"]
    images.resize((images.shape[0] + 64, 40, 40))
    images[-64:-32] = 7
    w.file.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_sigkill_mid_append_keeps_every_complete_case(tmp_path):
    path = tmp_path / "d.h5"
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path), "3"], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    # a reader opens the file the killed writer left behind and sees exactly 3 cases
    with open_dataset(path) as ds:
        assert ds.case_ids == ["c0", "c1", "c2"]
        expected = [case_checksum(ds[i].image, ds[i].mask) for i in range(3)]
        assert expected == [ds[i].checksum for i in range(3)]
    # the next writer recovers (clears the dead writer's flags), trims the half case, appends
    with DatasetWriter(path, image_dtype="int16") as w:
        assert w.file["images"].shape[0] == 24  # 3 cases of 6 slices on 8-slice boundaries
        w.append(_case("c3", (6, 10, 10)))
    with open_dataset(path) as ds:
        assert ds.case_ids == ["c0", "c1", "c2", "c3"]
        assert not ds.swmr  # cleanly closed now: a plain reader opens it
        np.testing.assert_array_equal(ds["c3"].image, _case("c3", (6, 10, 10)).image)


_SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from dsbprep.store import CaseData, DatasetWriter
    path, n = sys.argv[1], int(sys.argv[2])
    with DatasetWriter(path, image_dtype="int16", chunks=(8, 32, 32)) as w:
        print("open", flush=True)
        for i in range(n):
            img = np.full((24, 64, 64), i, np.int16)
            w.append(CaseData(f"c{i}", img, np.full(img.shape, i % 3, np.uint8)))
            time.sleep(0.05)
    """
)


def test_reader_during_build_sees_only_complete_cases(tmp_path):
    path = tmp_path / "d.h5"
    with DatasetWriter(path, image_dtype="int16", chunks=(8, 32, 32)):
        pass  # create the file so the reader can open it at once
    with subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(path), "30"],
                          stdout=subprocess.PIPE) as proc:
        assert proc.stdout.readline().strip() == b"open"
        seen = 0
        deadline = time.monotonic() + 60
        with open_dataset(path) as ds:
            assert ds.swmr
            while proc.poll() is None and time.monotonic() < deadline:
                ds.refresh()
                for i in range(len(ds)):
                    rec = ds[i]
                    img = rec.image
                    assert (img == int(rec.case_id[1:])).all()
                    assert rec.checksum == case_checksum(img, rec.mask)
                seen = max(seen, len(ds))
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert seen > 0
    with open_dataset(path) as ds:
        assert len(ds) == 30


def test_crash_during_creation_leaves_no_file(tmp_path):
    # the file is created under a temporary name and renamed: the real name is either absent or valid
    path = tmp_path / "d.h5"
    with DatasetWriter(path, image_dtype="uint8"):
        pass
    leftovers = [p for p in os.listdir(tmp_path) if "creating" in p]
    assert leftovers == []
    with open_dataset(path) as ds:
        assert len(ds) == 0


def test_verify_detects_corruption(tmp_path, capsys):
    from dsbprep.verify import main as verify_main

    path = tmp_path / "d.h5"
    with DatasetWriter(path, image_dtype="int16", chunks=(4, 8, 8)) as w:
        w.append(_case("a", seed=1))
        w.append(_case("b", seed=2))
        w.append_failure("c", "c: broken")
    assert verify_main([str(path)]) == 0
    assert "2 cases verified, 1 failed-case rows" in capsys.readouterr().out
    with h5py.File(path, "a") as f:  # flip one voxel of case b behind the writer's back
        f["images"][9, 1, 1] += 1
    assert verify_main([str(path)]) == 1
    out = capsys.readouterr().out
    assert "case 'b': checksum" in out and "case 'a'" not in out
    assert verify_main([str(tmp_path / "absent.h5")]) == 2


def test_planted_symlinks_are_not_followed(tmp_path):
    # issue 16: the lock file and the temporary file must never write through a planted symlink
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    path = tmp_path / "d.h5"
    os.symlink(victim, f"{path}.lock")
    with pytest.raises(DatasetFormatError, match="lock file .*d.h5.lock is a symlink"):
        DatasetWriter(path, image_dtype="uint8")
    assert not path.exists()
    os.unlink(f"{path}.lock")
    os.symlink(victim, f"{path}.creating-{os.getpid()}")  # the name the old code used
    with DatasetWriter(path, image_dtype="uint8", chunks=(4, 8, 8)) as w:
        w.append(_case("a", dtype=np.uint8))
    assert victim.read_bytes() == b"precious"
    assert os.path.islink(f"{path}.creating-{os.getpid()}")  # untouched
    with open_dataset(path) as ds:
        assert ds.case_ids == ["a"]
    fifo = tmp_path / "e.h5"
    os.mkfifo(f"{fifo}.lock")
    with pytest.raises(DatasetFormatError, match="not a regular file"):
        DatasetWriter(fifo, image_dtype="uint8")


def test_unreadable_rows_and_the_read_api(tmp_path):
    path = tmp_path / "d.h5"
    with DatasetWriter(path, image_dtype="int16", chunks=(4, 8, 8), pad_value=-1024) as w:
        for k, cid in enumerate("abc"):
            w.append(_case(cid, seed=k))
    with h5py.File(path, "a") as f:  # point b's row before the start of the arrays
        index = f["index"][:]
        index["z0"][1] = -4
        f["index"][:] = index
    with pytest.raises(DatasetFormatError, match=r"cannot append to a file with 1 invalid index row\(s\)"):
        DatasetWriter(path)
    with open_dataset(path) as ds:
        assert ds.case_ids == ["a", "c"] and "b" not in ds
        assert list(ds.unreadable) == ["b"]
        assert ds.unreadable["b"] == f"{path}: case 'b' (row 1): field z0: is negative"
        with pytest.raises(DatasetFormatError, match="field z0"):
            ds["b"]
        with pytest.raises(DatasetFormatError, match="1 unreadable case"):
            list(ds.iter_cases(strict=True))
        assert [r.case_id for r in ds.iter_cases()] == ["a", "c"]
        assert ds.column("z0").tolist() == [0, 16] and ds.column("shape").shape == (2, 3)
        assert ds.image_dtype == np.int16 and ds.image_shape[1:] == (9, 11) and ds.chunks == (4, 8, 8)
        image, mask = ds["c"].arrays()
        np.testing.assert_array_equal(image, _case("c", seed=2).image)
    with h5py.File(path, "a") as f:  # a checksum that no longer matches: arrays() refuses
        f["images"][16, 0, 0] += 1
    with open_dataset(path) as ds, pytest.raises(DatasetFormatError, match="'c' .*field checksum"):
        ds["c"].arrays()


def test_metadata_is_parsed_lazily_within_limits(tmp_path):
    from dsbprep.store import ReadLimits

    path = tmp_path / "d.h5"
    with DatasetWriter(path, image_dtype="int16", chunks=(4, 8, 8)) as w:
        w.append(_case("a", seed=1))
        w.append(CaseData("deep", np.zeros((1, 2, 2), np.int16), np.zeros((1, 2, 2), np.uint8),
                          meta={"x": [[[[1]]]]}))
    with open_dataset(path) as ds:
        assert ds["deep"].meta["x"] == [[[[1]]]]
    with open_dataset(path, limits=ReadLimits(max_meta_depth=4)) as ds:
        assert ds.case_ids == ["a", "deep"]  # nothing parsed yet
        with pytest.raises(DatasetFormatError, match=r"case 'deep': field meta: nested 5 levels deep \(at most 4\)"):
            _ = ds["deep"].meta
        assert [r.case_id for r in ds.iter_cases(check_meta=True)] == ["a"]
        assert "deep" in ds.unreadable
