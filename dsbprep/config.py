"""Reading ``config.ini``: every path and parameter of the pipeline.

The defaults live here, in code, section by section; ``config.ini`` at the
repository root repeats them with comments and is what users edit. A test
checks that the two agree key for key, so neither drifts. Unknown sections or
keys in a user's file are an error (a typo must not be silently ignored).

Values are parsed by :meth:`Config.params` into Python values: numbers,
booleans (true/false), comma-separated tuples, or strings.
"""

from __future__ import annotations

import ast
import configparser
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .defaults import PREPROCESS, PREPROCESS_EXTRA, SEGMENTATION, ini_value
from .errors import DsbprepError

__all__ = ["DEFAULTS", "Config", "ConfigError", "load_config", "parse_value"]


class ConfigError(DsbprepError, ValueError):
    """A ``--config`` file that cannot be used: malformed, a duplicate, an unknown name.

    The message is one line naming the file (and the line, when known).
    """

#: Section -> key -> default (as written in config.ini). Keep in step with config.ini.
DEFAULTS: dict[str, dict[str, str]] = {
    "paths": {
        "data_directory": "data/input",
        "output_filename": "data/dsbprep.h5",
        "report": "data/build_report.json",
        "figure": "data/random_case.png",
    },
    "build": {
        "source": "lung",
        "workers": "2",
        "backend": "loky",
        "scheduler": "",
        "max_pending": "4",
        "seed": "0",
        "compression": "blosc-lz4",
        "chunks": "64, 64, 64",
        "sample_patients": "3",
        "sample_seed": "0",
        "worker_memory_limit_gb": "6",
    },
    "dicom": {
        "pad_hu": "-1024",
        "allowed_modalities": "CT",
        "max_voxels": "2147483648",
    },
    # written once in dsbprep/defaults.py (the stages' keyword defaults)
    "segmentation": {k: ini_value(v) for k, v in SEGMENTATION.items()},
    "preprocess": {k: ini_value(v) for k, v in {**PREPROCESS, **PREPROCESS_EXTRA}.items()},
    "annotations": {
        "lidc_xml": "true",
        "luna_csv": "",
        "min_diameter_mm": "3.0",
        "label_rule": "luna16",
    },
    "splits": {
        "assign": "true",
        "fractions": "0.7, 0.2, 0.1",
        "seed": "0",
    },
    "augmentation": {
        "preset": "",
        "flip_axes": "z, y, x",
        "flip_probability": "0.5",
        "rot90": "true",
        "rotate_max_degrees": "0",
        "rotate_max_degrees_3d": "0",
        "rotate_probability": "0.5",
        "scale_zoom": "0.7, 1.4",
        "scale_probability": "0",
        "scale_per_axis": "false",
        "noise_std": "0, 0.1",
        "noise_unit": "std",
        "noise_probability": "0",
        "blur_sigma": "0.5, 1",
        "blur_probability": "0",
        "brightness_range": "0.75, 1.25",
        "brightness_probability": "0",
        "contrast_range": "0.75, 1.25",
        "contrast_probability": "0",
        "lowres_zoom": "0.5, 1",
        "lowres_probability": "0",
        "gamma_range": "0.7, 1.5",
        "gamma_probability": "0",
        "gamma_invert_probability": "0",
    },
    "loader": {
        "patch_size": "96, 96, 96",
        "batch_size": "16",
        "epochs": "3",
        "sampler": "auto",
        "labels": "",
        "positive_fraction": "0.7",
        "seed": "0",
        "shuffle": "true",
        "split": "",
        "channels_last": "false",
        "dtype": "float32",
        "cache_mb": "64",
        "threads": "0",
        "figure": "data/random_patches.png",
    },
    "contours": {
        "link_file": "link.csv",
        "dicom_dir": "dicoms",
        "contour_dir": "contourfiles",
        "empty_frames": "skip",
        "max_area_fraction": "0.5",
        "target_spacing": "",
    },
    "rle": {
        "csv_name": "",
        "image_size": "384",
    },
    "nrrd": {
        "image_name": "image.nrrd",
        "label_name": "label.nrrd",
        "label_map": "1=9 10 11; 2=12 13 14",
        "label_bits": "255",
        "target_spacing": "",
        "spacing_tolerance_mm": "0.01",
        "origin_tolerance_mm": "0.1",
        "direction_tolerance": "0.001",
        "image_dtype": "int16",
        "pad_value": "-1024",
        "png_directory": "",
        "png_window": "-1200, 600",
    },
    "volumes": {
        "images_dir": "imagesTr",
        "labels_dir": "labelsTr",
        "channel": "_0000",
        "label_map": "",
        "label_bits": "0",
        "target_spacing": "",
        "image_dtype": "int16",
        "pad_value": "-1024",
    },
}


def parse_value(text: str) -> Any:
    """Parse one ini value: bool, int, float, comma-separated tuple or string.

    Examples
    --------
    >>> parse_value("2"), parse_value("-1.5"), parse_value("true"), parse_value("1, 2.5")
    (2, -1.5, True, (1, 2.5))
    >>> parse_value("data/in"), parse_value("")
    ('data/in', '')
    """
    text = text.strip()
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if "," in text:
        return tuple(parse_value(part) for part in text.split(",") if part.strip())
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


class Config:
    """Parsed configuration: ``cfg.params("segmentation")`` -> dict of keyword arguments.

    Parameters
    ----------
    parser : configparser.ConfigParser
        Holds the defaults overlaid with the user's file.
    path : Path or None
        The file read, if any (relative paths in ``[paths]`` are relative to the
        current directory, as the CLI is run from the project folder).
    """

    def __init__(self, parser: configparser.ConfigParser, path: Path | None) -> None:
        self.parser = parser
        self.path = path

    def params(self, section: str) -> dict[str, Any]:
        """All keys of ``section`` as parsed Python values."""
        if not self.parser.has_section(section):
            raise KeyError(f"config has no section [{section}]")
        return {k: parse_value(v) for k, v in self.parser.items(section)}

    def get(self, section: str, key: str) -> Any:
        """One parsed value."""
        return parse_value(self.parser.get(section, key))

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> Config:
        """A copy with ``{section: {key: value}}`` set (None values are skipped); self is unchanged.

        Examples
        --------
        >>> base = load_config(None)
        >>> base.with_overrides({"build": {"workers": 4, "chunks": (8, 8, 8)}}).get("build", "chunks")
        (8, 8, 8)
        """
        parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
        parser.read_dict({s: dict(self.parser.items(s)) for s in self.parser.sections()})
        _set_values(parser, overrides)
        return Config(parser, self.path)

    def text(self) -> str:
        """The effective configuration as ini text (stored in each dataset file)."""
        lines = []
        for section in self.parser.sections():
            lines.append(f"[{section}]")
            lines += [f"{k} = {v}" for k, v in self.parser.items(section)]
            lines.append("")
        return "\n".join(lines)


def load_config(path: str | os.PathLike | None = None,
                overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Config:
    """Read ``path`` (default: ``./config.ini`` if present) over the built-in defaults.

    Parameters
    ----------
    path : str or Path, optional
        An ini file. ``None`` uses ``config.ini`` in the current directory when it
        exists, else the defaults alone.
    overrides : mapping, optional
        ``{section: {key: value}}`` applied last (command-line flags).

    Returns
    -------
    Config

    Raises
    ------
    FileNotFoundError
        ``path`` was given and does not exist.
    ConfigError
        (a ValueError) The file is malformed, repeats a section or key, or has a section or
        key dsbprep does not know: one line naming the file, the line and the problem.
    """
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    parser.read_dict(DEFAULTS)
    used: Path | None = None
    if path is None and Path("config.ini").is_file():
        path = "config.ini"
    if path is not None:
        used = Path(path)
        if not used.is_file():
            raise FileNotFoundError(f"config file {used} does not exist")
        user = _read_user_file(used)
        for section in user.sections():
            if section not in DEFAULTS:
                raise ConfigError(f"{used}: unknown section [{section}]; known: {', '.join(DEFAULTS)}")
            for key, value in user.items(section):
                if key not in DEFAULTS[section]:
                    raise ConfigError(
                        f"{used}: unknown key {key!r} in [{section}]; known: {', '.join(DEFAULTS[section])}"
                    )
                parser.set(section, key, value)
    _set_values(parser, overrides or {})
    return Config(parser, used)


def _set_values(parser: configparser.ConfigParser, overrides: Mapping[str, Mapping[str, Any]]) -> None:
    """Write ``{section: {key: value}}`` into ``parser`` as ini text (None values are skipped)."""
    for section, values in overrides.items():
        for key, value in values.items():
            if value is not None:
                if isinstance(value, tuple | list):
                    value = ", ".join(str(v) for v in value)
                parser.set(section, key, str(value).lower() if isinstance(value, bool) else str(value))


def _read_user_file(path: Path) -> configparser.ConfigParser:
    """Parse ``path`` strictly (no duplicate section or key); errors become one-line ConfigErrors."""
    user = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    try:
        with open(path, encoding="utf-8") as stream:
            user.read_file(stream, source=str(path))
    except configparser.DuplicateSectionError as err:
        raise ConfigError(f"{path}: line {err.lineno}: section [{err.section}] appears twice") from None
    except configparser.DuplicateOptionError as err:
        raise ConfigError(
            f"{path}: line {err.lineno}: key {err.option!r} appears twice in [{err.section}]"
        ) from None
    except configparser.MissingSectionHeaderError as err:
        raise ConfigError(
            f"{path}: line {err.lineno}: {err.line.strip()!r} comes before any [section] header"
        ) from None
    except configparser.ParsingError as err:
        lineno, line = err.errors[0]
        try:  # configparser stores repr(line)
            line = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            pass
        raise ConfigError(
            f"{path}: line {lineno}: cannot parse {line.strip()!r} (expected 'key = value' or "
            "'[section]')"
        ) from None
    except configparser.Error as err:
        raise ConfigError(f"{path}: {' '.join(str(err).split())}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    return user
