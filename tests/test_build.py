"""The build: real DICOM in, one HDF5 file out; resume, failures, SIGKILL, workers, CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dsbprep.build import main, run_build
from dsbprep.config import load_config
from dsbprep.phantom import write_sample_cohort
from dsbprep.store import case_checksum, open_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Four synthetic patients plus two broken folders."""
    root = tmp_path_factory.mktemp("cohort")
    write_sample_cohort(root, n_patients=4, seed=11)
    (root / "zz-empty").mkdir()
    junk = root / "zz-junk"
    junk.mkdir()
    (junk / "a.dcm").write_bytes(os.urandom(4000))
    (junk / "notes.txt").write_text("not dicom")
    return root


@pytest.fixture(scope="module")
def clean_build(cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "clean.h5"
    report = run_build(load_config(None), data_directory=cohort, output_filename=out, workers=1, progress=False)
    assert len(report.built) == 4, report.failed
    return out


def _checksums(path: Path) -> dict[str, str]:
    with open_dataset(path) as ds:
        out = {}
        for rec in ds:
            assert rec.checksum == case_checksum(rec.image, rec.mask), rec.case_id
            out[rec.case_id] = rec.checksum
        return out


def test_build_records_failures_and_goes_on(clean_build):
    with open_dataset(clean_build) as ds:
        assert len(ds) == 4
        assert set(ds.failures) == {"zz-empty", "zz-junk"}
        assert "zz-junk" in ds.failures["zz-junk"]
        for rec in ds:
            assert rec.image.dtype == np.uint8
            assert set(np.unique(rec.mask)) == {0, 1, 2}  # both lungs, labelled
            assert rec.meta["lungs_found"] == 2
            assert rec.split in ("train", "val", "test")


def test_sample_nodules_become_boxes_on_the_nodules(cohort, clean_build):
    """The default cohort's truth XML gives one box per nodule, centred on nodule tissue."""
    from dsbprep.phantom import make_sample_patient
    from dsbprep.preprocess import PREPROCESS_DEFAULTS

    lo, hi = PREPROCESS_DEFAULTS["window"]
    with open_dataset(clean_build) as ds:
        for rec in ds:
            _, truth = make_sample_patient(int(rec.case_id.split("-")[1]), seed=11)
            assert len(rec.boxes) == len(truth["nodules"]), rec.case_id
            for box in rec.boxes:
                z, y, x = np.round(box[:3]).astype(int)
                hu = lo + rec.image[z, y, x] / 255 * (hi - lo)  # nodules are soft tissue, lungs ~ -850
                assert hu > -300, (rec.case_id, box.tolist(), hu)
                assert rec.mask[z, y, x] in (1, 2)  # inside a lung
            world = sorted(n["center_world_zyx"][0] for n in rec.meta["nodules"])
            assert world == pytest.approx(sorted(c[0] for c, _ in truth["nodules"]), abs=1.0)


def test_workers_2_equals_workers_1(cohort, clean_build, tmp_path):
    out = tmp_path / "w2.h5"
    report = run_build(load_config(None), data_directory=cohort, output_filename=out, workers=2, progress=False)
    assert sorted(report.built) == sorted(_checksums(clean_build))
    assert _checksums(out) == _checksums(clean_build)


def test_cli_resume_and_report(cohort, tmp_path):
    out, rep = tmp_path / "d.h5", tmp_path / "r.json"
    argv = ["--data_directory", str(cohort), "--output_filename", str(out), "--report", str(rep),
            "--workers", "1", "--no-progress"]
    assert main(argv) == 0
    first = json.loads(rep.read_text())
    assert len(first["built"]) == 4 and set(first["failed"]) == {"zz-empty", "zz-junk"}
    assert main(argv) == 0  # again: nothing new, the failed ones are retried and fail again
    second = json.loads(rep.read_text())
    assert second["built"] == [] and sorted(second["skipped"]) == sorted(first["built"])
    with open_dataset(out) as ds:
        assert len(ds) == 4  # every case exactly once


def test_print_random_image(clean_build, tmp_path, capsys):
    fig = tmp_path / "fig.png"
    argv = ["--data_directory", str(tmp_path / "nothing-new"), "--output_filename", str(clean_build),
            "--report", "", "--print_random_image", "--figure", str(fig), "--no-progress"]
    (tmp_path / "nothing-new").mkdir()
    (tmp_path / "nothing-new" / "x.txt").write_text("no dicom here")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "shape" in out and "spacing" in out and str(fig) in out
    assert fig.stat().st_size > 10_000


def test_report_and_figure_go_next_to_another_output_file(clean_build, tmp_path, monkeypatch, capsys):
    """--output_filename elsewhere: the report and figure default beside it, not to ./data/."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(project)  # the configured report and figure are data/... of this folder
    out = elsewhere / "x.h5"
    shutil.copy(clean_build, out)
    (tmp_path / "nothing-new").mkdir()
    (tmp_path / "nothing-new" / "x.txt").write_text("no dicom here")  # not empty: no cohort
    argv = ["--data_directory", str(tmp_path / "nothing-new"), "--output_filename", str(out),
            "--print_random_image", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = elsewhere / "x_build_report.json"
    assert f"report {report}" in printed and json.loads(report.read_text())["built"] == []
    assert (elsewhere / "x_random_case.png").stat().st_size > 10_000
    assert not (project / "data").exists()  # the default build's report is left alone
    # the configured output keeps the configured report and figure paths
    (project / "data").mkdir()
    shutil.copy(clean_build, project / "data" / "dsbprep.h5")
    argv[3] = "data/dsbprep.h5"
    assert main(argv) == 0
    assert (project / "data" / "build_report.json").is_file()
    assert (project / "data" / "random_case.png").stat().st_size > 10_000


def test_missing_input_is_an_error_exit(tmp_path, capsys):
    # a folder that exists but holds only a file with no DICOM -> one failed case, exit 0;
    # a config naming an unknown key -> exit 2 with the key named
    bad = tmp_path / "bad.ini"
    bad.write_text("[build]\nworkres = 2\n")
    assert main(["--config", str(bad)]) == 2
    assert "workres" in capsys.readouterr().err


_BUILD = [sys.executable, "-m", "dsbprep.build", "--workers", "1", "--no-progress", "--report", ""]


def test_sigkill_midway_then_resume_gives_each_case_once(cohort, clean_build, tmp_path):
    out = tmp_path / "killed.h5"
    args = [*_BUILD, "--data_directory", str(cohort), "--output_filename", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 120
        n = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists():
                try:
                    with open_dataset(out) as ds:
                        n = len(ds)
                except Exception:  # the file may be mid-creation: try again
                    n = 0
            if n >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert n >= 2, "the build never got two cases in"
    with open_dataset(out) as ds:  # the killed file opens and holds complete cases only
        partial = len(ds)
        assert 2 <= partial <= 4
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _checksums(out) == _checksums(clean_build)  # bit-identical to a clean build, each once


def test_lidc_built_twice_is_one_case(lidc_dir, reference_npz, tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    (data / "LIDC-IDRI-0001").symlink_to(lidc_dir, target_is_directory=True)
    out = tmp_path / "lidc.h5"
    cfg = load_config(None)
    first = run_build(cfg, data_directory=data, output_filename=out, workers=1, progress=False)
    assert first.built == ["LIDC-IDRI-0001"], first.failed
    second = run_build(cfg, data_directory=data, output_filename=out, workers=1, progress=False)
    assert second.built == [] and second.skipped == ["LIDC-IDRI-0001"]
    with open_dataset(out) as ds:
        assert ds.case_ids == ["LIDC-IDRI-0001"]
        rec = ds[0]
        assert rec.meta["lungs_found"] == 2
        assert len(rec.boxes) >= 1  # the reader XML's nodule(s)
        # fidelity with grt123's own _clean.npy: same shape, >= 99 % of voxels within 2 grey levels
        clean = np.load(reference_npz)["clean"][0]
        image = rec.image
        assert image.shape == clean.shape
        close = np.abs(image.astype(int) - clean.astype(int)) <= 2
        assert close.mean() >= 0.99, close.mean()
        # the nodule (a 33 mm mass at the lung wall: soft tissue, so outside the air mask) is kept
        # inside the dilated lung region, beside the LEFT lung (label 1) only
        z, y, x = np.round(rec.boxes[0, :3]).astype(int)
        assert rec.image[z, y, x] != 170
        near = rec.mask[z - 15:z + 16, y - 15:y + 16, x - 15:x + 16]
        assert (near == 1).sum() > 100 and (near == 2).sum() == 0
    shutil.rmtree(data)
