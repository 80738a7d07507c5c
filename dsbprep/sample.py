"""Alias of :mod:`dsbprep.phantom` (the synthetic chest CT cohort), kept for old imports.

``python -m dsbprep.sample OUTDIR`` still runs :func:`dsbprep.phantom.main`. New code
imports :mod:`dsbprep.phantom`; "sample" elsewhere in dsbprep means patch sampling
(:mod:`dsbprep.patches`).
"""

from __future__ import annotations

from .phantom import *  # noqa: F403
from .phantom import __all__, main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
