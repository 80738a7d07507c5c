"""The ``dsbprep`` command (dsbprep.cli): subcommands delegate to each module's ``main``."""

from __future__ import annotations

import configparser
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsbprep import cli

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)


def test_console_script_is_declared_and_resolves():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    scripts = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    assert scripts == ["dsbprep = dsbprep.cli:console"]
    module, attr = scripts[0].split("=")[1].strip().split(":")
    assert getattr(importlib.import_module(module), attr) is cli.console


def test_every_command_module_has_main_and_help(capsys):
    for name, (module, _) in cli.COMMANDS.items():
        assert callable(importlib.import_module(f"dsbprep.{module}").main), name
        with pytest.raises(SystemExit) as info:
            cli.main([name, "--help"])
        assert info.value.code == 0
        assert f"dsbprep.{module}" in capsys.readouterr().out


def test_python_m_dsbprep_lists_the_commands_and_delegates(tmp_path):
    done = _run("-m", "dsbprep", "--help")
    assert done.returncode == 0
    assert all(f"  {name} " in done.stdout for name in cli.COMMANDS)
    missing = tmp_path / "absent.h5"
    via_cli = _run("-m", "dsbprep", "verify", str(missing))
    via_module = _run("-m", "dsbprep.verify", str(missing))
    assert via_cli.returncode == via_module.returncode == 2
    assert via_cli.stderr == via_module.stderr and str(missing) in via_cli.stderr
    unknown = _run("-m", "dsbprep", "bulid")
    assert unknown.returncode == 2 and "unknown command 'bulid'" in unknown.stderr


def test_sample_is_an_alias_of_phantom(tmp_path):
    import dsbprep.phantom
    import dsbprep.sample

    assert dsbprep.sample.write_sample_cohort is dsbprep.phantom.write_sample_cohort
    assert dsbprep.sample.__all__ == dsbprep.phantom.__all__
    for args in (["-m", "dsbprep.sample", "--help"], ["-m", "dsbprep", "sample", "--help"]):
        done = _run(*args)
        assert done.returncode == 0 and "--patients" in done.stdout, done.stderr


def test_version_and_no_command(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("dsbprep ")
    assert cli.main([]) == 2
