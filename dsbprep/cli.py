"""The ``dsbprep`` command: one subcommand per pipeline command, each a module's ``main(argv)``.

``dsbprep build ...`` is ``python -m dsbprep.build ...``, ``dsbprep report ...`` is
``python -m dsbprep.report ...`` and so on (``python -m dsbprep ...`` is ``dsbprep ...``);
the arguments after the subcommand go to the module unchanged, and ``dsbprep CMD --help``
prints the module's own help. Installed as a console script (setup.cfg
``[options.entry_points]``).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from ._version import __version__

__all__ = ["ALIASES", "COMMANDS", "console", "exit_with", "main"]

#: Subcommand -> (module under dsbprep, one-line description), in pipeline order.
COMMANDS: dict[str, tuple[str, str]] = {
    "phantom": ("phantom", "write the synthetic chest CT cohort as DICOM series (alias: sample)"),
    "build": ("build", "build or resume a dataset file from DICOM/mask folders"),
    "verify": ("verify", "re-read every case of a dataset file and check it"),
    "report": ("report", "write the visual QA report (HTML + PNGs) of a dataset file"),
    "loader": ("loader", "iterate batches of augmented patches from a dataset file"),
    "export": ("export", "export a dataset file for grt123's detector, as an nnU-Net v2 raw dataset or as npz files"),
    "evaluate": ("evaluate", "score predicted masks against ground truth (Dice, HD95)"),
}
#: Other names of subcommands.
ALIASES = {"sample": "phantom"}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: dsbprep COMMAND [ARGS ...]   (or: python -m dsbprep COMMAND [ARGS ...])",
        "",
        "DICOM folders to one training-ready HDF5 file, and augmented patches from it.",
        "",
        "commands (each has --help; `dsbprep CMD` = `python -m dsbprep.CMD`):",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "options:", "  -h, --help  this help", "  --version   the dsbprep version"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dsbprep COMMAND ARGS``; returns the command's exit status (2 for a bad command).

    Examples
    --------
    >>> main(["--version"])  # doctest: +ELLIPSIS
    dsbprep ...
    0
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"dsbprep {__version__}")
        return 0
    name = ALIASES.get(args[0], args[0])
    if name not in COMMANDS:
        print(f"{_usage()}\n\ndsbprep: error: unknown command {args[0]!r}; choose from "
              f"{', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"dsbprep.{COMMANDS[name][0]}")
    status = module.main(args[1:])
    return 0 if status is None else int(status)


def exit_with(status: int) -> None:
    """Exit with ``status``; skip HDF5's shutdown when a file could not be closed cleanly.

    After a full disk the store keeps such files open on purpose (HDF5 would crash at exit
    trying to flush what it cannot write): then the process ends without Python's shutdown.
    """
    store = sys.modules.get("dsbprep.store")
    if getattr(store, "FILES_LEFT_OPEN", None):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    raise SystemExit(status)


def console() -> None:
    """Console-script entry point (``dsbprep``)."""
    exit_with(main())


if __name__ == "__main__":
    console()
