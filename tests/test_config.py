"""config.ini and the code's defaults stay in step; parsing and errors."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

import dsbprep
from dsbprep.config import DEFAULTS, load_config, parse_value

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
