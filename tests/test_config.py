"""config.ini and the code's defaults stay in step; parsing and errors."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dsbprep
from dsbprep.config import DEFAULTS, ConfigError, load_config, parse_value

REPO = Path(__file__).resolve().parents[1]


def test_config_ini_has_exactly_the_code_defaults():
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    parser.read(REPO / "config.ini")
    assert parser.sections() == list(DEFAULTS)
    for section, values in DEFAULTS.items():
        assert dict(parser.items(section)) == values, section


def test_unknown_key_and_section_are_errors(tmp_path):
    p = tmp_path / "c.ini"
    p.write_text("[build]\nworkers = 3\n")
    assert load_config(p).get("build", "workers") == 3
    p.write_text("[bulid]\nworkers = 3\n")
    with pytest.raises(ValueError, match=r"unknown section \[bulid\]"):
        load_config(p)
    p.write_text("[build]\nwrokers = 3\n")
    with pytest.raises(ValueError, match="unknown key 'wrokers'"):
        load_config(p)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "absent.ini")


def test_overrides_and_types():
    cfg = load_config(REPO / "config.ini", overrides={"build": {"workers": 5, "chunks": (8, 16, 16)}})
    assert cfg.get("build", "workers") == 5
    assert cfg.get("build", "chunks") == (8, 16, 16)
    assert parse_value("false") is False
    assert "[paths]" in cfg.text()


def test_public_api_resolves():
    for name in dsbprep.__all__:
        assert getattr(dsbprep, name) is not None, name
    with pytest.raises(AttributeError):
        dsbprep.no_such_name  # noqa: B018


def test_segmentation_section_matches_segment_defaults():
    from dsbprep.segment import CONFIG_DEFAULTS

    cfg = load_config(REPO / "config.ini").params("segmentation")
    assert cfg.keys() == CONFIG_DEFAULTS.keys()
    for key, value in CONFIG_DEFAULTS.items():
        assert cfg[key] == pytest.approx(value), key


#: Malformed config files -> the one-line message each must give (after the file name).
BAD_FILES = {
    "dup-key": ("[build]\nworkers = 2\nworkers = 3\n", "line 3: key 'workers' appears twice in [build]"),
    "dup-section": ("[build]\nworkers = 2\n[paths]\n[build]\n", "line 4: section [build] appears twice"),
    "no-header": ("workers = 2\n", "line 1: 'workers = 2' comes before any [section] header"),
    "garbage": ("[build]\nworkers 2\n", "line 2: cannot parse 'workers 2'"),
    "not-utf8": (b"[build]\nworkers = \xff\xfe\n", "not UTF-8 text"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_malformed_files_are_one_line_errors_naming_the_file(tmp_path, name):
    text, message = BAD_FILES[name]
    path = tmp_path / f"{name}.ini"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working


@pytest.mark.parametrize("command", ["build", "report", "loader"])
def test_every_cli_reading_a_config_says_one_line(tmp_path, command):
    """``python -m dsbprep CMD --config BAD``: exit 2, one line naming the file, no traceback."""
    bad = tmp_path / "bad.ini"
    bad.write_text("[build]\nworkers = 2\nworkers = 3\n")
    done = subprocess.run(
        [sys.executable, "-m", "dsbprep", command, "--config", str(bad)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{bad}: line 3: key 'workers' appears twice in [build]" in lines[0]


def test_with_overrides_copies(tmp_path):
    base = load_config(None)
    copy = base.with_overrides({"build": {"workers": 7, "backend": None}})
    assert copy.get("build", "workers") == 7 and base.get("build", "workers") == 2
    assert copy.get("build", "backend") == base.get("build", "backend")
