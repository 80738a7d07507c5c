"""Reliability: bad inputs, killed builds and workers, a full disk, readers during a build.

Every test builds its inputs from real files of ``../shared/data`` (the 79-slice
64 x 64 cip ct-64 chest CT series, a few Sunnybrook MR frames), changed by the
test, and runs the real build (in-process, or ``python -m dsbprep.build`` in a
child process when it is to be killed). docs/RELIABILITY.md lists the promises
these tests prove and the figures they produced.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import psutil
import pydicom
import pytest

from dsbprep.build import WORKER_DIED, main, run_build
from dsbprep.config import load_config
from dsbprep.store import DatasetWriter, case_checksum, open_dataset
from dsbprep.verify import main as verify_main
from dsbprep.verify import verify_dataset

REPO = Path(__file__).resolve().parents[1]
#: The corpus and cohort are built with this seed (random bytes, kill moments).
SEED = 20170412
#: Stored value written into every pixel of the "no air" scan: +40 HU (soft tissue) with
#: the series' slope 1 / intercept 0, so the segmentation finds no air and no lungs.
NO_AIR_HU = 40
#: Rows and Columns declared by the "huge" series: 79 x 65535^2 voxels, far above MAX_VOXELS.
HUGE_SIDE = 65535
#: Build runs killed at a random moment (each resumes the file the last one left).
KILL_RUNS = 8
#: RescaleIntercept offsets (HU) that make the cohort's cases differ from each other.
COHORT_OFFSETS_HU = (0, 8, 16, 24, 32)

# --- the bad-case corpus ----------------------------------------------------------------


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".dcm")


def _z(path: Path) -> float:
    return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])


def _copy_series(
    src: Path, dst: Path, edit: Callable | None = None, files: list[Path] | None = None
) -> None:
    """Copy the series in ``src`` to ``dst``, passing each dataset through ``edit(ds)``."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in files if files is not None else _files(src):
        if edit is None:
            shutil.copyfile(path, dst / path.name)
            continue
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(dst / path.name)


def _new_uids(series_uid: str) -> Callable:
    def edit(ds: pydicom.Dataset) -> None:
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID

    return edit


def _no_ipp_keep_location(ds: pydicom.Dataset) -> None:
    ds.SliceLocation = ds.ImagePositionPatient[2]
    del ds.ImagePositionPatient


def _no_ipp(ds: pydicom.Dataset) -> None:
    del ds.ImagePositionPatient


def _no_position_no_number(ds: pydicom.Dataset) -> None:
    del ds.ImagePositionPatient
    del ds.InstanceNumber


def _no_air(ds: pydicom.Dataset) -> None:
    ds.PixelData = np.full((ds.Rows, ds.Columns), NO_AIR_HU, np.int16).tobytes()


def _huge(ds: pydicom.Dataset) -> None:
    ds.Rows = ds.Columns = HUGE_SIDE


#: Good cases: built, and identical to the reference build named here (see ``references``).
GOOD = {
    "good-clean": "pristine",
    "good-every-file-twice": "pristine",  # byte-identical copies are dropped
    "good-last-slice-truncated": "pristine-without-last",  # an undecodable end slice is dropped
    "good-plus-junk-dcm": "pristine",  # random bytes named .dcm are not DICOM: ignored
    "good-two-series": "pristine",  # the series with the most files is loaded
    "good-slicelocation-only": "pristine",  # no ImagePositionPatient: ordered by SliceLocation
    "good-instancenumber-only": "instancenumber-only",  # no position at all: InstanceNumber order
}
#: Bad cases -> substrings the failure reason must hold (the file or folder, and the problem).
BAD = {
    "bad-middle-slice-truncated": ["IMG0040.dcm", "inside the volume cannot be decoded"],
    "bad-no-pixel-data": ["IMG0041.dcm", "inside the volume cannot be decoded"],
    "bad-single-slice": ["IMG0001.dcm", "a volume needs >= 2 slices"],
    "bad-mr-series": ["bad-mr-series", "file 1.dcm", "modality MR, expected CT"],
    "bad-empty-folder": ["bad-empty-folder", "no DICOM image files found"],
    "bad-not-dicom": ["bad-not-dicom", "no DICOM image files found", "scan.dcm"],
    "bad-random-bytes": ["bad-random-bytes", "unreadable", "scan0002.dcm"],
    "bad-no-air": ["bad-no-air", "found 0 lung(s)"],
    "bad-huge-declared-size": ["IMG0001.dcm", "max_voxels"],
    "bad-unorderable": ["bad-unorderable", "cannot order slices"],
}


def write_corpus(root: Path, ct64: Path, mr: Path) -> dict[str, Path]:
    """Write the corpus (GOOD and BAD case folders) and the reference folders; return the latter."""
    rng = np.random.default_rng(SEED)
    files = _files(ct64)
    by_z = sorted(files, key=_z)
    _copy_series(ct64, root / "good-clean")
    _copy_series(ct64, root / "good-every-file-twice")
    _copy_series(ct64, root / "good-every-file-twice" / "copy")
    _copy_series(ct64, root / "good-last-slice-truncated")
    last = root / "good-last-slice-truncated" / by_z[-1].name
    last.write_bytes(last.read_bytes()[: last.stat().st_size * 6 // 10])  # cut inside the pixels
    _copy_series(ct64, root / "good-plus-junk-dcm")
    for k in range(2):
        (root / "good-plus-junk-dcm" / f"junk{k}.dcm").write_bytes(rng.bytes(9000))
    _copy_series(ct64, root / "good-two-series")
    _copy_series(
        ct64, root / "good-two-series" / "other", _new_uids(pydicom.uid.generate_uid()), files[:30]
    )
    _copy_series(ct64, root / "good-slicelocation-only", _no_ipp_keep_location)
    _copy_series(ct64, root / "good-instancenumber-only", _no_ipp)

    _copy_series(ct64, root / "bad-middle-slice-truncated")
    middle = root / "bad-middle-slice-truncated" / "IMG0040.dcm"
    middle.write_bytes(middle.read_bytes()[: middle.stat().st_size * 6 // 10])
    _copy_series(ct64, root / "bad-no-pixel-data")
    ds = pydicom.dcmread(ct64 / "IMG0041.dcm")
    del ds.PixelData
    ds.save_as(root / "bad-no-pixel-data" / "IMG0041.dcm")
    _copy_series(ct64, root / "bad-single-slice", files=files[:1])
    _copy_series(mr, root / "bad-mr-series", files=_files(mr)[:6])
    (root / "bad-empty-folder").mkdir()
    (root / "bad-not-dicom").mkdir()
    (root / "bad-not-dicom" / "notes.txt").write_text("radiology report, not an image\n")
    (root / "bad-not-dicom" / "labels.csv").write_text("id,label\n1,0\n")
    (root / "bad-not-dicom" / "scan.dcm").write_text("this file only pretends to be DICOM\n")
    (root / "bad-random-bytes").mkdir()
    for k in range(1, 4):  # random bytes, the last ones with the DICM magic at byte 128
        blob = bytearray(rng.bytes(9000))
        if k > 1:
            blob[128:132] = b"DICM"
        (root / "bad-random-bytes" / f"scan{k:04d}.dcm").write_bytes(bytes(blob))
    _copy_series(ct64, root / "bad-no-air", _no_air)
    _copy_series(ct64, root / "bad-huge-declared-size", _huge)
    _copy_series(ct64, root / "bad-unorderable", _no_position_no_number)

    refs = root.parent / f"{root.name}-references"
    _copy_series(ct64, refs / "pristine")
    _copy_series(ct64, refs / "pristine-without-last", files=[p for p in files if p != by_z[-1]])
    _copy_series(ct64, refs / "instancenumber-only", _no_ipp)
    return {p.name: p for p in refs.iterdir()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, ct64_dir, sunnybrook_dir) -> tuple[Path, dict[str, str]]:
    """The corpus folder and the checksums of the reference builds (each folder built alone)."""
    root = tmp_path_factory.mktemp("corpus") / "data"
    refs = write_corpus(root, ct64_dir, sunnybrook_dir / "dicoms" / "SCD0000101")
    out = tmp_path_factory.mktemp("refs") / "refs.h5"
    report = run_build(
        load_config(None),
        data_directory=next(iter(refs.values())).parent,
        output_filename=out,
        workers=1,
        progress=False,
    )
    assert sorted(report.built) == sorted(refs), report.failed
    return root, _checksums(out)


def _checksums(path: Path) -> dict[str, str]:
    """Case id -> stored checksum, after checking each stored case against its checksum."""
    out = {}
    with open_dataset(path) as ds:
        assert len(set(ds.case_ids)) == len(ds.case_ids)
        for rec in ds:
            assert case_checksum(rec.image, rec.mask) == rec.checksum, rec.case_id
            out[rec.case_id] = rec.checksum
    return out


def test_bad_cases_are_reported_and_good_ones_built(corpus, tmp_path, capsys):
    root, refs = corpus
    out, rep = tmp_path / "corpus.h5", tmp_path / "report.json"
    argv = [
        "--data_directory",
        str(root),
        "--output_filename",
        str(out),
        "--report",
        str(rep),
        "--workers",
        "2",
        "--no-progress",
        "--strict",
    ]
    assert main(argv) == 1  # --strict: some cases failed
    printed = capsys.readouterr().out
    assert f"built {len(GOOD)}, skipped 0 (already stored), failed {len(BAD)}" in printed
    report = json.loads(rep.read_text())
    assert sorted(report["built"]) == sorted(GOOD)
    assert sorted(report["failed"]) == sorted(BAD)
    for case_id, needles in BAD.items():
        reason = report["failed"][case_id]
        assert f"FAILED {case_id}: {reason}" in printed
        for needle in needles:
            assert needle in reason, (case_id, needle, reason)
    stored = _checksums(out)
    assert {cid: stored[cid] for cid in GOOD} == {cid: refs[ref] for cid, ref in GOOD.items()}
    assert refs["pristine"] != refs["pristine-without-last"] != refs["instancenumber-only"]
    with open_dataset(out) as ds:
        assert sorted(ds.failures) == sorted(BAD)
        notes = {rec.case_id: " ".join(rec.meta["warnings"]) for rec in ds}
    assert "identical" in notes["good-every-file-twice"]
    assert "undecodable end slice" in notes["good-last-slice-truncated"]
    assert "junk0.dcm" in notes["good-plus-junk-dcm"]
    assert "SliceLocation" in notes["good-slicelocation-only"]
    assert "InstanceNumber" in notes["good-instancenumber-only"]
    assert notes["good-clean"] == ""
    assert verify_dataset(str(out)).ok
    # the default exit status is 0 once the build ran; a resume skips the good cases
    assert main([a for a in argv if a != "--strict"]) == 0
    assert (
        f"built 0, skipped {len(GOOD)} (already stored), failed {len(BAD)}"
        in capsys.readouterr().out
    )
    assert _checksums(out) == stored


# --- killed builds and workers ------------------------------------------------------------


def _write_cohort(root: Path, ct64: Path) -> None:
    """Five real cases that differ: the ct-64 series with RescaleIntercept shifted by a few HU."""
    for k, offset in enumerate(COHORT_OFFSETS_HU):

        def shift(ds: pydicom.Dataset, offset: int = offset) -> None:
            ds.RescaleIntercept = offset

        _copy_series(ct64, root / f"case{k}", shift if offset else None)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, ct64_dir) -> tuple[Path, dict[str, str], float]:
    """The cohort folder, the checksums of a clean build of it, and that build's seconds."""
    root = tmp_path_factory.mktemp("cohort") / "data"
    _write_cohort(root, ct64_dir)
    out = tmp_path_factory.mktemp("clean") / "clean.h5"
    t0 = time.perf_counter()
    report = run_build(
        load_config(None), data_directory=root, output_filename=out, workers=1, progress=False
    )
    seconds = time.perf_counter() - t0
    assert len(report.built) == len(COHORT_OFFSETS_HU), report.failed
    clean = _checksums(out)
    assert len(set(clean.values())) == len(COHORT_OFFSETS_HU)  # the cases really differ
    return root, clean, seconds


def _build_cmd(data: Path, out: Path, workers: int = 2, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dsbprep.build",
        "--data_directory",
        str(data),
        "--output_filename",
        str(out),
        "--workers",
        str(workers),
        "--no-progress",
        "--report",
        "",
        *extra,
    ]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSBPREP_TEST_")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def _assert_prefix_of_clean(out: Path, clean: dict[str, str]) -> int:
    """The file opens (if it exists), verifies, and every case in it is one of the clean build's."""
    if not out.exists():
        return 0
    stored = _checksums(out)
    assert set(stored) <= set(clean)
    assert all(stored[cid] == clean[cid] for cid in stored)
    result = verify_dataset(str(out))
    assert result.ok, result.problems
    return len(stored)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_at_random_moments_then_resume(cohort, tmp_path):
    data, clean, clean_seconds = cohort
    out = tmp_path / "killed.h5"
    rng = np.random.default_rng(SEED)
    kills, stored_at_kill = 0, [0]
    for _ in range(KILL_RUNS):
        # a complete file is rebuilt (the new rows supersede the old), so every run has work
        extra = ["--rebuild"] if stored_at_kill[-1] == len(clean) else []
        delay = float(rng.uniform(1.5, 1.5 + clean_seconds))
        proc = subprocess.Popen(
            _build_cmd(data, out, 2, *extra),
            env=_env(),
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole job: the build and its workers
            proc.wait()
            kills += 1
        stored_at_kill.append(_assert_prefix_of_clean(out, clean))
    done = subprocess.run(
        _build_cmd(data, out), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert _checksums(out) == clean  # every case once, bit-identical to the clean build
    assert verify_dataset(str(out)).ok
    assert kills >= KILL_RUNS // 2, "the seeded delays should interrupt most runs"
    print(
        f"\nRELIABILITY sigkill: {kills} kills of {KILL_RUNS} runs, cases stored after each run: "
        f"{stored_at_kill[1:]}"
    )


#: A build in a child process whose source SIGKILLs the workers of some cases (tests/faults.py):
#: argv = data folder, output file, case ids killed every time, ids killed once, marker folder.
_KILLING_BUILD = """
import logging, sys
from dsbprep.build import report_lines, run_build
from dsbprep.config import load_config
from dsbprep.sources import get_source
from faults import KillingSource
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
data, out, kill, kill_once, marker_dir = sys.argv[1:]
config = load_config(None)
source = KillingSource(get_source("lung", config), kill=frozenset(kill.split(",")),
                       kill_once=frozenset(kill_once.split(",")), marker_dir=marker_dir)
report = run_build(config, data_directory=data, output_filename=out, workers=2, progress=False,
                   source=source)
print("\\n".join(report_lines(out, report)))
sys.exit(1 if report.failed else 0)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_worker_killed_by_its_case_is_retried_once_then_failed(cohort, tmp_path):
    data, clean, _ = cohort
    out = tmp_path / "w.h5"
    env = _env(PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}")
    done = subprocess.run(
        [sys.executable, "-c", _KILLING_BUILD, str(data), str(out), "case1", "case3", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 1, done.stderr  # one failed case
    assert "built 4, skipped 0 (already stored), failed 1" in done.stdout
    assert f"FAILED case1: case1: {WORKER_DIED}" in done.stdout
    assert (
        "case case3:" in done.stderr and "worker process died" in done.stderr
    )  # killed once, built
    assert (tmp_path / "case3.killed").exists()
    stored = _checksums(out)
    assert stored == {cid: s for cid, s in clean.items() if cid != "case1"}
    with open_dataset(out) as ds:
        assert ds.failures["case1"].startswith(f"case1: {WORKER_DIED}")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_case_over_the_worker_memory_limit_fails_with_memory_error(cohort, tmp_path):
    """A real loky worker hits its RLIMIT_AS: that case fails (MemoryError), the build goes on."""
    from faults import GreedySource

    from dsbprep.sources import get_source

    data, clean, _ = cohort
    out = tmp_path / "m.h5"
    limit_gb = 1.5
    config = load_config(None).with_overrides({"build": {"worker_memory_limit_gb": limit_gb}})
    writer_limit = resource.getrlimit(resource.RLIMIT_AS)
    source = GreedySource(get_source("lung", config), greedy=frozenset({"case2"}), nbytes=3 * 2**30)
    report = run_build(config, data_directory=data, output_filename=out, workers=2,
                       progress=False, source=source)
    assert sorted(report.built) == sorted(cid for cid in clean if cid != "case2")
    reason = report.failed["case2"]
    assert reason.startswith("case2: MemoryError: out of memory while processing"), reason
    assert f"worker address-space limit {limit_gb:g} GB" in reason
    assert resource.getrlimit(resource.RLIMIT_AS) == writer_limit  # the writer is not limited
    assert _checksums(out) == {cid: s for cid, s in clean.items() if cid != "case2"}
    with open_dataset(out) as ds:
        assert ds.failures["case2"] == reason


def _busy_workers(build: psutil.Process, min_cpu_s: float = 1.0) -> list[psutil.Process]:
    """The build's loky workers (not loky's resource tracker) that have computed a while."""
    out = []
    for child in build.children(recursive=True):
        try:
            if (
                "resource_tracker" not in " ".join(child.cmdline())
                and child.cpu_times().user > min_cpu_s
            ):
                out.append(child)
        except psutil.Error:  # it just ended
            continue
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_worker_killed_from_outside_mid_case(cohort, tmp_path):
    data, clean, clean_seconds = cohort
    out = tmp_path / "outside.h5"
    rng = np.random.default_rng(SEED + 1)
    killed = []
    with subprocess.Popen(
        _build_cmd(data, out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        build = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline and proc.poll() is None:
            stored = _assert_prefix_of_clean(out, clean) if out.exists() else 0
            workers = _busy_workers(build)
            if workers and stored < len(clean) - 1:  # busy workers and cases still to come
                time.sleep(float(rng.uniform(0.0, 0.5)))  # a random moment in the case
                victim = workers[int(rng.integers(len(workers)))]
                try:
                    victim.kill()
                    killed.append(victim.pid)
                except psutil.NoSuchProcess:
                    continue
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=240)
    assert killed, "no busy worker was found to kill"
    assert proc.returncode == 0, stderr
    assert "a worker process died" in stderr
    assert f"built {len(clean)}, skipped 0 (already stored), failed 0" in stdout
    assert _checksums(out) == clean


# --- disk full --------------------------------------------------------------------------


def _limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:  # in the child: writes past `limit` bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_disk_full_stops_the_build_and_keeps_the_stored_cases(cohort, tmp_path):
    data, clean, _ = cohort
    first = tmp_path / "first"
    first.mkdir()
    for name in ("case0", "case1"):
        (first / name).symlink_to(data / name, target_is_directory=True)
    out = tmp_path / "full.h5"
    assert (
        main(
            [
                "--data_directory",
                str(first),
                "--output_filename",
                str(out),
                "--workers",
                "1",
                "--no-progress",
                "--report",
                "",
            ]
        )
        == 0
    )
    # a few MiB of room left: less than the next case may need
    limit = out.stat().st_size + 4 * 2**20
    done = subprocess.run(
        _build_cmd(data, out, 1),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=280,
        preexec_fn=_limit_file_size(limit),
    )
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert f"no space left / file size limit while writing {out}" in done.stderr
    assert "File too large" in done.stderr and "Traceback" not in done.stderr
    assert out.stat().st_size <= limit
    assert _assert_prefix_of_clean(out, clean) == 2  # the earlier cases, intact
    assert verify_main([str(out)]) == 0
    done = subprocess.run(
        _build_cmd(data, out, 1), env=_env(), capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stderr
    assert _checksums(out) == clean


_WRITER_WITHOUT_RESERVATION = """
import os, resource, signal, sys
import numpy as np
from dsbprep.store import CaseData, DatasetWriter, StorageFullError
path, limit = sys.argv[1], int(sys.argv[2])
w = DatasetWriter(path, image_dtype="int16", chunks=(8, 32, 32), compression="none")
w.reserve_space = False  # the writes themselves hit the limit (a filesystem that over-commits)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
rng = np.random.default_rng(0)
try:
    for i in range(100):
        img = rng.integers(-900, 900, (16, 64, 64)).astype(np.int16)
        w.append(CaseData(f"c{i}", img, (img > 0).astype(np.uint8)))
except StorageFullError as err:
    print(err)
    try:
        w.append(CaseData("next", img, img > 0))
    except StorageFullError as again:
        print(again)
w.close()
sys.stdout.flush()
os._exit(3)  # HDF5 cannot flush what it could not write; its own shutdown would crash
"""


def test_disk_full_during_hdf5_writes_is_repaired_by_the_next_writer(tmp_path):
    """The fallback when the reservation does not protect: the file is repaired, not lost."""
    path = tmp_path / "d.h5"
    done = subprocess.run(
        [sys.executable, "-c", _WRITER_WITHOUT_RESERVATION, str(path), "800000"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(
        f"no space left / file size limit while writing {path}: File too large"
    )
    assert "an earlier write failed for lack of space" in lines[1]
    with DatasetWriter(path, image_dtype="int16") as w:  # repairs the file, trims the half case
        n = len(w.done())
        assert n >= 1
    assert verify_main([str(path)]) == 0
    with open_dataset(path) as ds:
        assert ds.case_ids == [f"c{i}" for i in range(n)]


# --- readers during a build ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_readers_in_another_process_see_only_complete_cases(cohort, tmp_path):
    from dsbprep.loader import BatchLoader

    data, clean, _ = cohort
    out = tmp_path / "live.h5"
    opened = batches = 0
    seen: set[str] = set()
    with subprocess.Popen(
        _build_cmd(data, out),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if not out.exists():
                time.sleep(0.05)
                continue
            with open_dataset(out) as ds:  # a reader that stays open and refreshes
                opened += 1
                for rec in ds:
                    assert clean[rec.case_id] == rec.checksum == case_checksum(rec.image, rec.mask)
                    seen.add(rec.case_id)
                ds.refresh()
                assert set(ds.case_ids) <= set(clean)
            try:
                loader = BatchLoader(
                    out, patch_size=(32, 32, 32), batch_size=2, epochs=1, seed=SEED
                )
            except ValueError as err:  # documented: no case stored yet
                assert "no case selected" in str(err)
                continue
            with loader:
                for batch in loader:
                    batches += 1
                    assert set(batch.case_ids) <= set(clean)
                    assert batch.images.shape[1:] == (1, 32, 32, 32)
        stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, stderr
    assert opened >= 3 and batches >= 1
    assert seen and seen <= set(clean)
    assert _checksums(out) == clean
    print(
        f"\nRELIABILITY readers: {opened} reader opens, {batches} loader batches during the build"
    )


# --- integrity ------------------------------------------------------------------------------


def test_verify_a_real_lung_build_and_detect_a_flipped_voxel(cohort, tmp_path, capsys):
    data, clean, _ = cohort
    first = tmp_path / "in"
    first.mkdir()
    for name in ("case0", "case2"):
        (first / name).symlink_to(data / name, target_is_directory=True)
    out = tmp_path / "lung.h5"
    run_build(
        load_config(None), data_directory=first, output_filename=out, workers=1, progress=False
    )
    assert verify_main([str(out)]) == 0
    assert "2 cases verified" in capsys.readouterr().out
    with open_dataset(out) as ds:
        row = ds.index[ds.position("case2")]
        z, (nz, ny, nx) = int(row["z0"]), row["shape"]
    with h5py.File(out, "a") as f:  # flip one lung voxel of case2 behind the writer's back
        f["images"][z + nz // 2, ny // 2, nx // 2] ^= 1
    assert verify_main([str(out)]) == 1
    printed = capsys.readouterr().out
    assert "case 'case2': checksum" in printed and "case 'case0'" not in printed
    with h5py.File(out, "a") as f:
        f.attrs["format_version"] = "3.0"  # issue 15: the format is 2.0 now
    assert verify_main([str(out)]) == 2
    assert "format version 3.0 by a newer dsbprep" in capsys.readouterr().err
