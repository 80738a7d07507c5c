"""Hostile dataset files (issue 16): each class is made by the test, then every command runs on it.

The classes of ``tests/hostile.py``: index rows pointing outside the arrays (negative
z0, z0 past the end, a shape larger than the arrays or 64 x 65536 x 65536, box and
meta ranges outside), a case id that is not UTF-8, metadata that is not an object
or 200,000 levels deep, a missing ``/index`` or ``kind``, a 2-D ``/images``, an
index with other fields, and HDF5 features that reach outside the file (external
storage, a virtual dataset, an external link, a soft link). For each, verify,
export, report and the loader must end in a one-line error naming the file and
the field, or read correct data (the other cases, byte for byte) and name the
case they skip; no bytes of the local "secret" file reach any output; the
process's memory stays bounded. The last test prints the table that
docs/RELIABILITY.md quotes.
"""

from __future__ import annotations

import logging
import shutil

import pytest
from hostile import HOSTILE, make_base, run_commands
from test_fuzz import PeakRSS

#: Most resident memory one class's four commands may add (MiB): the largest legitimate read
#: here is one 8 x 16 x 16 patch; the 64 x 65536 x 65536 case alone would be 256 GiB.
MAX_RSS_GROWTH_MIB = 300
#: (The issue's 1 GB bound is on what the commands take: they run inside the pytest process,
#: whose own size late in a full run, ~1 GB with real LIDC fixtures held, is not theirs;
#: alone the process peaks at ~130 MiB. The growth bound above is the stricter check.)
_MIB = 2**20
OUTCOMES: dict[str, tuple[dict, float, float]] = {}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("hostile") / "base.h5")


def _check_file_level(said, path, field) -> None:
    assert (said["verify"].rc, said["export"].rc, said["report"].rc, said["loader"].rc) == (2, 1, 2, 1)
    for name, s in said.items():
        text = s.text.strip()
        assert "\n" not in text, (name, text)  # one line, no traceback
        assert str(path) in text and f"{field}:" in text, (name, text)


def _check_case_level(said, level, field, caplog) -> None:
    assert said["verify"].rc == 1 and f"field {field}" in said["verify"].text
    readable = ("a", "c") if level == "row" else ("a", "b", "c")
    assert said["export"].rc == 0 and said["export"].cases == readable  # data compared in hostile.py
    assert said["report"].rc == 0 and set(said["report"].cases) == {"a", "c"}
    assert "unreadable listed" in said["report"].text
    assert said["loader"].rc == 0 and said["loader"].cases == readable
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipping unreadable case" in m and "(row 1)" in m or "case 'b'" in m for m in warned)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_file(name, base, tmp_path, caplog):
    level, field, mutate = HOSTILE[name]
    path = tmp_path / "d.h5"
    shutil.copy(base, path)
    mutate(path)
    caplog.set_level(logging.WARNING, logger="dsbprep")
    with PeakRSS() as rss:
        said = run_commands(path, tmp_path)
    OUTCOMES[name] = (said, rss.growth_mib, rss.peak / _MIB)
    if level == "file":
        _check_file_level(said, path, field)
    else:
        _check_case_level(said, level, field, caplog)
    assert rss.growth_mib < MAX_RSS_GROWTH_MIB


@pytest.mark.parametrize("name", ["negative z0", "metadata not an object"])
def test_strict_export_and_report_refuse_an_unreadable_case(name, base, tmp_path, capsys):
    from dsbprep.export import main as export_main
    from dsbprep.report import main as report_main

    path = tmp_path / "d.h5"
    shutil.copy(base, path)
    HOSTILE[name][2](path)
    if HOSTILE[name][0] == "row":  # the export reads no metadata: only a broken row stops it
        assert export_main(["--format", "npz", "--strict", str(path), str(tmp_path / "npz")]) == 1
        assert "case 'b'" in capsys.readouterr().err
        assert not (tmp_path / "npz").exists()  # nothing written
    assert report_main([str(path), "--out", str(tmp_path / "r"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "case 'b'" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "index.html").exists()


def test_loader_cli_meets_unreadable_metadata_with_one_line(base, tmp_path, capsys):
    from dsbprep.loader import main as loader_main

    path = tmp_path / "d.h5"
    shutil.copy(base, path)
    HOSTILE["metadata not an object"][2](path)
    config = tmp_path / "c.ini"
    config.write_text("[loader]\nsampler = label\npatch_size = 4, 8, 8\n")
    code = loader_main(["--input_filename", str(path), "--config", str(config),
                        "--batchsize", "1", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "case 'b'" in err and "not a JSON object" in err and "Traceback" not in err


def test_grt123_export_skips_a_case_whose_metadata_is_unreadable(base, tmp_path, caplog):
    # the grt123 export reads every case's metadata (its label rule): case b is skipped, the
    # others are written with their manifest (before, the export stopped after writing them)
    import json

    from dsbprep.export import MANIFEST, export_grt123

    path = tmp_path / "d.h5"
    shutil.copy(base, path)
    HOSTILE["metadata not an object"][2](path)
    caplog.set_level(logging.WARNING, logger="dsbprep")
    export_grt123(path, tmp_path / "g", names="as-is")
    manifest = json.loads((tmp_path / "g" / MANIFEST).read_text())
    assert sorted(str(c) for c in manifest["cases"]) and all("b" != str(c) for c in manifest["cases"])
    assert any("case 'b'" in r.getMessage() for r in caplog.records)


def test_report_hostile_outcomes(capsys):
    # runs last in this file: what each command said per class, for docs/RELIABILITY.md
    with capsys.disabled():
        print("\nRELIABILITY hostile files (command: exit status [cases read]: first line):")
        for name, (said, growth, peak) in OUTCOMES.items():
            print(f"* {name} (peak RSS {peak:.0f} MiB, +{growth:.0f} MiB)")
            for command, s in said.items():
                print(f"    {command}: {s.short()[:200]}")
