"""Fault-injecting sources for the reliability tests (imported by the build's worker processes).

Each wraps a real source and misbehaves for the case ids it is given, inside the worker
process that runs the case: :class:`KillingSource` SIGKILLs that process,
:class:`GreedySource` allocates more memory than the worker's address-space limit allows.
The build gets them through ``run_build(..., source=...)``; nothing in dsbprep knows them.
They live in a module of their own (not a test file) so that worker processes can
import them when they unpickle the source (loky passes the test's ``sys.path`` on).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class _Wrapper:
    """A source that behaves as ``inner`` (same file layout, discovery and processing)."""

    inner: Any

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def kind(self) -> str:
        return self.inner.kind

    @property
    def image_dtype(self) -> str:
        return self.inner.image_dtype

    @property
    def pad_value(self) -> float:
        return self.inner.pad_value

    @property
    def chunks(self) -> Any:
        return self.inner.chunks

    def discover(self, data_directory: str | Path) -> list:
        return self.inner.discover(data_directory)

    def process(self, task: Any) -> Any:
        return self.inner.process(task)


@dataclass
class KillingSource(_Wrapper):
    """SIGKILLs the process running a case of ``kill`` (every time) or ``kill_once`` (the first).

    A marker file ``<case id>.killed`` in ``marker_dir`` remembers a ``kill_once`` kill.
    """

    kill: frozenset[str] = field(default_factory=frozenset)
    kill_once: frozenset[str] = field(default_factory=frozenset)
    marker_dir: str = ""

    def process(self, task: Any) -> Any:
        if task.case_id in self.kill_once:
            marker = Path(self.marker_dir) / f"{task.case_id}.killed"
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return self.inner.process(task)
            os.kill(os.getpid(), signal.SIGKILL)
        if task.case_id in self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.process(task)


@dataclass
class GreedySource(_Wrapper):
    """Allocates (and writes) ``nbytes`` while processing a case of ``greedy``: a runaway case."""

    greedy: frozenset[str] = field(default_factory=frozenset)
    nbytes: int = 0

    def process(self, task: Any) -> Any:
        if task.case_id in self.greedy:
            hog = np.ones(self.nbytes, np.uint8)  # fails at the worker's limit, else fills pages
            del hog
        return self.inner.process(task)
