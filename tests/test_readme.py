"""Every command in README.md runs: the fenced ``bash`` and ``python`` blocks, in order.

The blocks run in a scratch project folder (``.venv`` linked to this checkout's, a copy of
``config.ini`` with a one-patient embedded default, so the build is small), with these
substitutions:

* ``make dataset`` -> the Makefile's recipe, ``.venv/bin/python -m dsbprep.build`` (checked
  against the Makefile; ``make`` itself would reinstall the package). ``make test`` is not
  run: it is what runs this test.
* ``/data/dsb17/stage1`` -> the synthetic cohort the first block wrote; ``/data/LIDC-IDRI`` ->
  a folder holding LIDC-IDRI-0001 from ../shared/data (the synthetic cohort without it);
  ``/data/luna16/annotations.csv`` -> a one-row LUNA16 CSV for that scan; ``/data/luna16`` ->
  a LUNA16-layout folder (``subset0/<uid>.mhd`` of that scan, or of a synthetic patient);
  ``/data/Task06_Lung`` -> a Decathlon-layout folder (``imagesTr``/``labelsTr`` NIfTI);
  ``/data/predictions.h5`` -> the built file itself; any other ``/data/...`` -> a scratch
  folder.
* ``.venv/bin/dsbprep`` -> the console script ``pip install`` wrote; a venv installed before
  the entry point existed gets the script pip would write for setup.cfg's entry point.
* ``dask scheduler`` and ``dask worker`` lines are long-running services: they are started
  in the background on this machine (scheduler-host -> 127.0.0.1, a free port) and stopped
  after their block.

A block fails the test when its shell exits non-zero. Then a few outputs are checked.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsbprep.config import DEFAULTS

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHARED_DATA = Path(os.environ.get("DSBPREP_SHARED_DATA", REPO.parent / "shared" / "data"))
LIDC = SHARED_DATA / "lidc-idri" / "LIDC-IDRI-0001"
#: LIDC-IDRI-0001's series and its nodule (world x, y, z mm and diameter, as LUNA16 writes them).
LIDC_SERIES_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
LUNA_ROW = (56.40, 86.39, -115.80, 32.76)
#: Seconds one block may run (the dask block starts a cluster and builds a case).
BLOCK_TIMEOUT_S = 600
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
SERVICE = re.compile(r"^dask (scheduler|worker)\b.*$", re.M)


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of ``text``, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _makefile_recipe(target: str) -> str:
    text = (REPO / "Makefile").read_text()
    match = re.search(rf"^{target}:.*\n\t(.+)$", text, re.M)
    assert match, f"Makefile has no {target} target"
    return match.group(1).replace("$(PY)", ".venv/bin/python")


def test_readme_blocks_are_known_kinds():
    blocks = readme_blocks(README.read_text())
    assert {lang for lang, _ in blocks} <= {"bash", "python"}, (
        "a new block kind needs a runner here"
    )
    assert blocks[0] == ("bash", "make dataset\nmake test\n")
    assert _makefile_recipe("dataset") == ".venv/bin/python -m dsbprep.build"


def test_readme_names_every_config_key_and_existing_docs():
    text = README.read_text()
    for section, keys in DEFAULTS.items():
        assert f"`[{section}]`" in text, section
        for key in keys:
            assert f"`{key}`" in text, f"README's configuration table lacks [{section}] {key}"
    for link in re.findall(r"\]\(((?:docs|notebooks)/[^)]+)\)", text):
        assert (REPO / link).exists(), f"README links to {link}, which does not exist"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A scratch project folder: .venv linked, config.ini with a one-patient embedded default."""
    root = tmp_path_factory.mktemp("readme")
    proj = root / "project"
    proj.mkdir()
    (proj / ".venv").symlink_to(REPO / ".venv", target_is_directory=True)
    config = (REPO / "config.ini").read_text()
    config, n = re.subn(r"^sample_patients = \d+$", "sample_patients = 1", config, flags=re.M)
    assert n == 1
    (proj / "config.ini").write_text(config)
    lidc = root / "LIDC-IDRI"
    lidc.mkdir()
    if LIDC.is_dir():
        (lidc / LIDC.name).symlink_to(LIDC, target_is_directory=True)
    luna = root / "annotations.csv"
    luna.write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
        f"{LIDC_SERIES_UID},{','.join(str(v) for v in LUNA_ROW)}\n"
    )
    (root / "data").mkdir()
    _volume_folders(root)
    return proj


def _console_script(proj: Path) -> str:
    """The ``dsbprep`` console script of the project's venv, or the one pip would write."""
    installed = proj / ".venv" / "bin" / "dsbprep"
    if installed.exists():
        return ".venv/bin/dsbprep"
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    (line,) = setup["options.entry_points"]["console_scripts"].strip().splitlines()
    name, target = (part.strip() for part in line.split("="))
    module, func = target.split(":")
    script = proj.parent / "bin" / name
    script.parent.mkdir(exist_ok=True)
    script.write_text(
        f"#!{proj / '.venv' / 'bin' / 'python'}\nimport sys\nfrom {module} import {func}\n"
        f"sys.exit({func}())\n"
    )
    script.chmod(0o755)
    return str(script)
def _volume_folders(root: Path) -> None:
    """LUNA16 (MetaImage) and Decathlon (NIfTI) layouts of LIDC-IDRI-0001 or a synthetic patient."""
    import numpy as np
    import SimpleITK as sitk

    from dsbprep.dicom import load_scan

    if LIDC.is_dir():
        scan, uid = load_scan(LIDC), LIDC_SERIES_UID
    else:
        from dsbprep.sample import write_sample_cohort

        write_sample_cohort(root / "sample", n_patients=1, seed=0)
        scan = load_scan(next(p for p in (root / "sample").iterdir() if p.is_dir()))
        uid = scan.series_uid
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(scan.source_files))
    image = sitk.Cast(reader.Execute(), sitk.sitkInt16)
    (root / "luna16" / "subset0").mkdir(parents=True)
    sitk.WriteImage(image, str(root / "luna16" / "subset0" / f"{uid}.mhd"))
    label = sitk.GetImageFromArray((sitk.GetArrayFromImage(image) > 0).astype(np.uint8))
    label.CopyInformation(image)
    for folder, name, volume in (("imagesTr", "lung_001", image), ("labelsTr", "lung_001", label)):
        (root / "Task06_Lung" / folder).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(volume, str(root / "Task06_Lung" / folder / f"{name}.nii.gz"))


def _substitute(code: str, proj: Path, port: int) -> str:
    root = proj.parent
    lidc = root / "LIDC-IDRI" if LIDC.is_dir() else proj / "data" / "input"
    for old, new in (
        ("make dataset", _makefile_recipe("dataset")),
        ("/data/dsb17/stage1", str(proj / "data" / "input")),
        ("/data/LIDC-IDRI", str(lidc)),
        ("/data/luna16/annotations.csv", str(root / "annotations.csv")),
        ("/data/luna16 ", f"{root / 'luna16'} "),
        ("/data/Task06_Lung ", f"{root / 'Task06_Lung'} "),
        ("/data/predictions.h5", "data/dsbprep.h5"),
        ("/data/", f"{root / 'data'}/"),
        ("scheduler-host:8786", f"127.0.0.1:{port}"),
        ("--port 8786", f"--port {port}"),
    ):
        code = code.replace(old, new)
    return code


def _run_bash(code: str, proj: Path, env: dict[str, str]) -> str:
    services = SERVICE.findall(code) and SERVICE.sub(
        lambda m: m.group(0) + " >/dev/null 2>&1 &", code
    )
    script = services or code
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=proj,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=BLOCK_TIMEOUT_S)
    finally:
        try:  # the block's background services (dask scheduler and workers)
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, (
        f"README block failed (exit {proc.returncode}):\n{script}\n---\n{out[-4000:]}"
    )
    return out


@pytest.mark.slow
def test_every_readme_command_runs(project):
    env = {
        **os.environ,
        "PATH": f"{project / '.venv' / 'bin'}:{os.environ['PATH']}",
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
        "KERAS_BACKEND": "torch",
    }
    env.pop("MPLBACKEND", None)
    port = _free_port()
    outputs = []
    dsbprep_command = _console_script(project)
    for lang, code in readme_blocks(README.read_text()):
        code = code.replace(".venv/bin/dsbprep", dsbprep_command)
        if lang == "bash":
            lines = [
                line for line in code.splitlines() if line.strip() != "make test"
            ]  # no recursion
            outputs.append(_run_bash(_substitute("\n".join(lines), project, port), project, env))
        else:
            proc = subprocess.run(
                [str(project / ".venv" / "bin" / "python"), "-c", _substitute(code, project, port)],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT_S,
            )
            assert proc.returncode == 0, (
                f"README python block failed:\n{code}\n---\n{proc.stderr[-4000:]}"
            )
            outputs.append(proc.stdout + proc.stderr)
    data = project.parent / "data"
    text = "\n".join(outputs)
    # set-up: the one-patient embedded default was built, and its report written
    assert "data/dsbprep.h5: built 1, skipped 0" in text
    assert (project / "report" / "index.html").is_file()
    summary = json.loads((project / "report" / "summary.json").read_text())
    assert [c["case_id"] for c in summary["cases"]] == ["SAMPLE-000"]
    # real-data commands
    assert (
        "dsb17.h5: built 1" in text and "lidc.h5: built 1" in text and "luna16.h5: built 1" in text
    )
    assert "luna16-mhd.h5: built 1" in text and "msd.h5: built 1" in text  # volume files
    if LIDC.is_dir():
        from dsbprep.store import open_dataset

        with open_dataset(data / "luna16.h5") as ds:  # the box came from the CSV (lidc_xml = false)
            assert len(ds["LIDC-IDRI-0001"].boxes) == 1
            assert ds["LIDC-IDRI-0001"].boxes[0, 6] == pytest.approx(LUNA_ROW[3])
    # command examples
    assert (project / "data" / "random_case.png").stat().st_size > 10_000
    assert "********** EPOCH 2 **************" in text
    assert "OK: 1 cases verified" in text
    assert list((project / "data" / "grt123").glob("*_clean.npy"))
    assert json.loads((project / "data" / "scores.json").read_text())
    # training loops and the distributed build
    assert "epoch 1 batch 0: loss" in text
    assert "dsb17-dask.h5: built 1" in text
    shutil.rmtree(project / "data", ignore_errors=True)


def test_fence_parser():
    text = "intro\n```bash\nls\n```\n\n```python\nprint(1)\n```\n"
    assert readme_blocks(text) == [("bash", "ls\n"), ("python", "print(1)\n")]
    assert (
        _substitute("make dataset /data/x scheduler-host:8786", Path("/p/proj"), 9)
        == ".venv/bin/python -m dsbprep.build /p/data/x 127.0.0.1:9"
    )
    _ = sys.executable  # the blocks run with the project's .venv python, not necessarily this one
