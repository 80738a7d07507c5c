"""Build a dsbprep dataset: discover cases, process them in parallel, append them to one file.

``python -m dsbprep.build`` (or ``dsbprep build``, ``make dataset``). One process - this one - is
the only writer; per-case work runs in worker processes (joblib/loky by
default, or a dask.distributed cluster) and finished cases stream back to it.
A case that fails is recorded with its reason and the build goes on. Re-running
on the same output resumes: cases already stored (same id, same input
fingerprint) are skipped; ``--rebuild`` processes them again.

Worker processes that die (SIGKILL, the out-of-memory killer) do not stop the
build: the cases that were in flight in the broken pool are retried alone, one
at a time, in a fresh pool, and a case that kills its worker twice while
running alone is recorded as failed ("worker process died: killed or out of
memory") while the build goes on. A full disk or a file
size limit stops the build with :class:`dsbprep.store.StorageFullError` (exit
status 2); the cases stored before it stay intact. See docs/RELIABILITY.md.

Worker processes run under an address-space limit (``[build] worker_memory_limit_gb``,
:func:`limit_address_space`): a case that needs more memory than any legitimate one
fails with a ``MemoryError`` as its reason, instead of the kernel's out-of-memory killer
picking a process - possibly the writer. The in-process path (``workers = 1``) is not
limited, since the writer runs there.

A source is the object :func:`dsbprep.sources.get_source` returns, or any object
with the same attributes passed to :func:`run_build` (the reliability tests pass
sources that kill their worker or allocate too much: tests/faults.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import sys
import time
import traceback
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config, load_config
from .encode import ChunkSpec, EncodedCase, encode_case
from .errors import DsbprepError
from .sources import Task, get_source
from .splits import assign_split
from .store import DatasetWriter, StorageFullError

__all__ = [
    "BuildReport", "WORKER_DIED", "default_outputs", "limit_address_space", "main", "report_lines",
    "run_build",
]

logger = logging.getLogger(__name__)


@dataclass
class BuildReport:
    """What a build did.

    Attributes
    ----------
    built, skipped : list of str
        Case ids stored by this build, and those already stored (resume).
    failed : dict
        Case id -> reason.
    seconds : float
        Wall time of the whole build.
    timeline : list of (str, float)
        Each built or failed case with the seconds since the build started at which
        it was recorded, in that order (throughput over time: benchmarks/bench_build.py).
    """

    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    timeline: list[tuple[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"built": self.built, "skipped": self.skipped, "failed": self.failed,
                "seconds": round(self.seconds, 3),
                "timeline": [[cid, round(t, 3)] for cid, t in self.timeline]}

    def summary(self) -> str:
        return (f"built {len(self.built)}, skipped {len(self.skipped)} (already stored), "
                f"failed {len(self.failed)} in {self.seconds:.1f} s")


#: Reason recorded for a case whose worker process died on both tries.
WORKER_DIED = "worker process died: killed or out of memory"
#: Seconds an idle loky worker waits for work before exiting (joblib's default).
_IDLE_WORKER_TIMEOUT_S = 300
#: Bytes per GB of ``[build] worker_memory_limit_gb``.
_GB = 2**30
#: Environment variables that size the thread pools of numerical libraries in workers.
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


#: What a worker returns for a task: (task, encoded case or None, error message or "").
Result = tuple[Task, EncodedCase | None, str]


def limit_address_space(limit_bytes: int) -> None:
    """Cap this process's address space (RLIMIT_AS) at ``limit_bytes`` (0: no cap).

    Run in each worker process (loky's initializer): an allocation beyond the cap raises
    ``MemoryError`` in that worker, which records the case as failed. The hard limit is
    left as it is; a cap above it is lowered to it.
    """
    if limit_bytes <= 0:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = limit_bytes if hard == resource.RLIM_INFINITY else min(limit_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _out_of_memory(case_id: str, stage: str) -> str:
    """Reason of a case that raised MemoryError, naming the worker's limit when one is set."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    limit = ("" if soft == resource.RLIM_INFINITY else
             f" (worker address-space limit {soft / _GB:g} GB, [build] worker_memory_limit_gb)")
    return f"{case_id}: MemoryError: out of memory while {stage}{limit}"


def _run_task(source: Any, task: Task, spec: ChunkSpec) -> Result:
    """Worker entry point: never raises for a bad case, returns (task, encoded case, error).

    The case is encoded here, in the worker, into the output file's compressed chunks
    (``spec``): the single writer only stores bytes, and a case travels at its
    compressed size (see :mod:`dsbprep.encode`).
    """
    try:
        case = source.process(task)
    except DsbprepError as err:
        return task, None, str(err)
    except MemoryError:
        return task, None, _out_of_memory(task.case_id, "processing")
    except Exception as err:  # a bug or an unforeseen input must not stop the whole build
        logger.debug("case %s failed:\n%s", task.case_id, traceback.format_exc())
        return task, None, f"{task.case_id}: unexpected {type(err).__name__}: {err}"
    try:
        return task, encode_case(case, spec), ""
    except (ValueError, DsbprepError) as err:
        return task, None, f"{task.case_id}: cannot store: {err}"
    except MemoryError:
        return task, None, _out_of_memory(task.case_id, "encoding")


def _results_inline(source: Any, tasks: list[Task], spec: ChunkSpec) -> Iterator[Result]:
    for task in tasks:
        yield _run_task(source, task, spec)


def _loky_executor(workers: int, memory_limit: int) -> Any:
    """The process pool (loky's reusable executor: a fresh one if the last one broke).

    Each worker caps its address space at ``memory_limit`` bytes (0: no cap) when it starts.
    """
    from joblib.externals.loky import cpu_count, get_reusable_executor

    threads = str(max(cpu_count() // workers, 1))
    env = {var: os.environ.get(var, threads) for var in _THREAD_VARS}
    return get_reusable_executor(max_workers=workers, timeout=_IDLE_WORKER_TIMEOUT_S, env=env,
                                 initializer=limit_address_space, initargs=(memory_limit,))


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _death_note(err: BaseException) -> str:
    """Short description of a broken pool: loky's worker exit codes when it gives them."""
    codes = re.search(r"exit codes of the workers are (\{.*?\})", str(err))
    return f"worker exit codes {codes.group(1)}" if codes else _first_line(err)


def _results_loky(source: Any, tasks: list[Task], spec: ChunkSpec, plan: _Plan) -> Iterator[Result]:
    """Run tasks in a loky process pool; survive worker processes that die.

    When a worker dies, loky breaks the whole pool: every case in flight fails with
    ``TerminatedWorkerError`` (a ``BrokenProcessPool``), not only the one whose worker
    died, and which one it was is not known. Those cases are retried after the others,
    alone, one at a time, in a fresh pool, where a death is the case's own doing. A case
    whose worker dies twice while it runs alone (once, if it was alone when the pool
    first broke) is recorded as failed (:data:`WORKER_DIED`) and the build goes on.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    from joblib.externals.loky.process_executor import BrokenProcessPool

    def submit(task: Task) -> Any:
        return _loky_executor(plan.workers, plan.memory_limit).submit(_run_task, source, task, spec)

    queue = deque(tasks)
    in_flight: dict[Any, Task] = {}
    suspects: deque[Task] = deque()
    deaths: dict[str, int] = {}  # deaths of a worker running the case alone
    limit = max(plan.workers, plan.max_pending)
    try:
        while queue or in_flight:
            while queue and len(in_flight) < limit:
                task = queue.popleft()
                try:
                    in_flight[submit(task)] = task
                except (BrokenProcessPool, RuntimeError) as err:  # the pool broke meanwhile
                    logger.warning("case %s not submitted (%s); it will be retried", task.case_id,
                                   _first_line(err))
                    suspects.append(task)
            if not in_flight:
                continue
            alone = len(in_flight) == 1
            done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            for future in done:
                task = in_flight.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool as err:
                    logger.warning("case %s: a worker process died (%s); the case will be retried",
                                   task.case_id, _death_note(err))
                    deaths[task.case_id] = int(alone)
                    suspects.append(task)
                    continue
                yield result
        while suspects:  # alone, one at a time: a death now is the case's own
            task = suspects.popleft()
            try:
                result = submit(task).result()
            except BrokenProcessPool as err:
                deaths[task.case_id] = deaths.get(task.case_id, 0) + 1
                if deaths[task.case_id] < 2:
                    logger.warning("case %s: its worker process died (%s); retrying it once more",
                                   task.case_id, _death_note(err))
                    suspects.append(task)
                    continue
                logger.error("case %s: its worker process died again (%s)", task.case_id, _death_note(err))
                result = (task, None, f"{task.case_id}: {WORKER_DIED} (twice; {_death_note(err)})")
            yield result
    finally:
        for future in in_flight:  # the consumer stopped early (e.g. the disk is full)
            future.cancel()


def _results_dask(source: Any, tasks: list[Task], spec: ChunkSpec, plan: _Plan) -> Iterator[Result]:
    """Run tasks on a dask.distributed cluster (no address-space limit: dask sizes its workers)."""
    scheduler, max_pending = plan.scheduler, plan.max_pending
    try:
        from dask.distributed import Client, KilledWorker, as_completed
    except ImportError as err:
        raise ImportError("the dask backend needs the 'dask' extra: pip install 'dsbprep[dask]'") from err
    with Client(scheduler) as client:
        pending = iter(tasks)
        futures = as_completed()
        submitted: dict[str, Task] = {}

        def submit(task: Task) -> None:
            future = client.submit(_run_task, source, task, spec, pure=False)
            submitted[future.key] = task
            futures.add(future)

        for task in [t for _, t in zip(range(max_pending), pending, strict=False)]:
            submit(task)
        for future in futures:
            task = submitted.pop(future.key)
            try:
                result = future.result()
            except KilledWorker as err:  # dask retried it on other workers already
                result = (task, None, f"{task.case_id}: {WORKER_DIED} (dask: {_first_line(err)})")
            future.release()
            nxt = next(pending, None)
            if nxt is not None:
                submit(nxt)
            yield result


@dataclass(frozen=True)
class _Plan:
    """Where and how one build runs: the effective ``[paths]`` and ``[build]`` values."""

    data_directory: Path
    output_filename: Path
    workers: int
    backend: str
    scheduler: str
    max_pending: int
    memory_limit: int  # bytes of address space per worker process, 0 = none

    @classmethod
    def from_config(cls, config: Config) -> _Plan:
        build, paths = config.params("build"), config.params("paths")
        return cls(Path(paths["data_directory"]), Path(paths["output_filename"]),
                   max(int(build["workers"]), 1), build["backend"], build["scheduler"],
                   int(build["max_pending"]), int(float(build["worker_memory_limit_gb"]) * _GB))


def run_build(
    config: Config,
    *,
    data_directory: str | os.PathLike | None = None,
    output_filename: str | os.PathLike | None = None,
    workers: int | None = None,
    backend: str | None = None,
    scheduler: str | None = None,
    rebuild: bool = False,
    progress: bool = True,
    source: str | Any | None = None,
) -> BuildReport:
    """Build (or resume) a dataset file.

    Parameters
    ----------
    config : Config
        Parsed configuration; the arguments below override its ``[paths]``/``[build]``
        values (in a copy: ``config`` itself is not changed). The sources are built from
        that effective configuration, which the file stores.
    data_directory, output_filename : path, optional
        Input folder and HDF5 file.
    workers : int, optional
        Worker processes (1 runs in this process).
    backend : {"loky", "dask"}, optional
    scheduler : str, optional
        dask.distributed scheduler address for ``backend="dask"``.
    rebuild : bool
        Process cases again even when already stored (the new row supersedes the old).
    progress : bool
        Show a tqdm progress bar on stderr.
    source : str or source object, optional
        Source name (default ``[build] source``), or a source object (``name``, ``kind``,
        ``image_dtype``, ``pad_value``, ``chunks``, ``discover``, ``process``; it must pickle).

    Returns
    -------
    BuildReport
    """
    t0 = time.perf_counter()
    config = config.with_overrides({
        "paths": {"data_directory": data_directory, "output_filename": output_filename},
        "build": {"workers": workers, "backend": backend, "scheduler": scheduler},
    })
    plan = _Plan.from_config(config)
    if plan.backend not in ("loky", "dask"):
        raise ValueError(f"unknown backend {plan.backend!r}; expected 'loky' or 'dask'")
    if plan.backend == "dask" and not plan.scheduler:
        raise ValueError("--backend dask needs --scheduler ADDRESS (e.g. tcp://host:8786)")
    src = get_source(source or config.get("build", "source"), config) \
        if source is None or isinstance(source, str) else source
    if src.name == "lung" and _is_empty(plan.data_directory):
        _write_default_cohort(plan.data_directory, config.params("build"))
    tasks = src.discover(plan.data_directory)
    plan.output_filename.parent.mkdir(parents=True, exist_ok=True)
    report = BuildReport()
    with _open_writer(src, plan.output_filename, config) as writer:
        done = writer.done()
        todo = []
        for task in tasks:
            if not rebuild and done.get(task.case_id) == task.fingerprint:
                report.skipped.append(task.case_id)
            else:
                todo.append(task)
        logger.info("%d cases found, %d already stored, %d to build", len(tasks), len(report.skipped), len(todo))
        results = _results(src, todo, writer.spec, plan)
        _store_results(results, writer, report, config.params("splits"), t0,
                       progress=progress, total=len(todo), name=plan.output_filename.name)
    report.seconds = time.perf_counter() - t0
    return report


def _write_default_cohort(data_directory: Path, build: dict[str, Any]) -> None:
    """Write the embedded default cohort (:mod:`dsbprep.phantom`) into an empty input folder."""
    from .phantom import write_sample_cohort

    logger.warning("%s is empty or absent: writing the embedded default cohort of %d "
                   "SYNTHETIC chest CT scans there", data_directory, build["sample_patients"])
    write_sample_cohort(data_directory, n_patients=int(build["sample_patients"]),
                        seed=int(build["sample_seed"]))


def _open_writer(src: Any, output_filename: Path, config: Config) -> DatasetWriter:
    """The dataset's single writer, created for ``src``'s kind of cases."""
    return DatasetWriter(
        output_filename,
        image_dtype=src.image_dtype,
        chunks=src.chunks,
        compression=config.get("build", "compression"),
        kind=src.kind,
        pad_value=src.pad_value,
        attrs={"config": config.text(), "source": src.name},
    )


def _results(src: Any, todo: list[Task], spec: ChunkSpec, plan: _Plan) -> Iterable[Result]:
    """Each task's result as it finishes: in this process, a loky pool or a dask cluster.

    One worker runs the cases in this process, and so does a single case when workers have
    no memory limit (no pool to start); with a limit, a lone case still runs in a worker.
    """
    if plan.backend == "dask":
        return _results_dask(src, todo, spec, plan)
    if plan.workers <= 1 or (len(todo) <= 1 and not plan.memory_limit):
        return _results_inline(src, todo, spec)
    return _results_loky(src, todo, spec, plan)


def _store_results(results: Iterable[Result], writer: DatasetWriter, report: BuildReport,
                   splits: dict[str, Any], t0: float, *, progress: bool, total: int,
                   name: str) -> None:
    """Append each finished case (or its failure) to the file and the report, as it arrives."""
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="case", disable=not progress, file=sys.stderr,
              desc=f"building {name}") as bar:
        for task, encoded, error in results:
            if encoded is not None and splits["assign"]:
                encoded.case.split = assign_split(task.patient, tuple(splits["fractions"]), int(splits["seed"]))
            if encoded is not None:
                try:
                    writer.append(encoded)
                except StorageFullError:
                    raise  # not the case's fault: stop; the cases stored before stay intact
                except (ValueError, DsbprepError) as err:
                    encoded, error = None, f"{task.case_id}: cannot store: {err}"
            if encoded is not None:
                report.built.append(task.case_id)
            else:
                logger.error("case %s failed: %s", task.case_id, error)
                report.failed[task.case_id] = error
                writer.append_failure(task.case_id, error, source_hash=task.fingerprint,
                                      meta={"inputs": task.inputs})
            report.timeline.append((task.case_id, time.perf_counter() - t0))
            bar.update(1)
            bar.set_postfix(failed=len(report.failed), refresh=False)


def _is_empty(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


def print_random_case(path: str | os.PathLike, figure: str | os.PathLike, seed: int | None = None) -> str:
    """Print a random stored case's id, shape and spacing; save a PNG of it (returns its path)."""
    from .store import open_dataset
    from .viz import save_case_figure

    rng = np.random.default_rng(seed)
    with open_dataset(path) as ds:
        if len(ds) == 0:
            raise DsbprepError(f"{path}: holds no cases to show")
        case = ds[int(rng.integers(len(ds)))]
        print(f"case {case.case_id}: shape {case.shape} (z, y, x), spacing "
              f"{tuple(round(s, 4) for s in case.spacing)} mm, {len(case.boxes)} boxes")
        out = save_case_figure(case, figure)
    print(f"figure saved to {out}")
    return str(out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dsbprep.build",
        description="Process the DICOM files and masks into one dsbprep HDF5 dataset "
                    "(resumable: cases already stored are skipped).",
    )
    p.add_argument("--config", default=None, help="ini file (default: ./config.ini if present)")
    p.add_argument("--data_directory", default=None, help="base directory for data [paths] data_directory")
    p.add_argument("--output_filename", default=None, help="name of the HDF5 file to create or extend")
    p.add_argument("--source", default=None, choices=("lung", "volumes", "contours", "rle", "nrrd"),
                   help="mask source: lung, volumes, contours, rle or nrrd (default: [build] source)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default from config)")
    p.add_argument("--backend", choices=("loky", "dask"), default=None, help="parallel backend")
    p.add_argument("--scheduler", default=None, help="dask.distributed scheduler address (backend dask)")
    p.add_argument("--rebuild", action="store_true", help="process cases again even if already stored")
    p.add_argument("--report", default=None,
                   help="write the build report as JSON to this file ('' for none; default [paths] "
                        "report, or OUTPUT_build_report.json next to another --output_filename)")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 when any case failed (default: 0 once the build ran)")
    p.add_argument("--print_random_image", action="store_true",
                   help="unit test: print a random stored case and save a PNG of it with its mask")
    p.add_argument("--figure", default=None,
                   help="PNG path for --print_random_image (default [paths] figure, or "
                        "OUTPUT_random_case.png next to another --output_filename)")
    p.add_argument("--seed", type=int, default=None, help="seed for --print_random_image")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def default_outputs(config: Config, output_filename: str | os.PathLike | None) -> tuple[str, str]:
    """Where a build's report and ``--print_random_image`` figure go unless given.

    The configured ``[paths] report`` and ``figure`` belong to the configured
    ``[paths] output_filename``. A build writing another file puts them next to it,
    named after it (``x.h5`` -> ``x_build_report.json``, ``x_random_case.png``), so that
    it does not overwrite the default build's report.

    Examples
    --------
    >>> from dsbprep.config import load_config
    >>> default_outputs(load_config(None), None)
    ('data/build_report.json', 'data/random_case.png')
    >>> default_outputs(load_config(None), "/elsewhere/x.h5")
    ('/elsewhere/x_build_report.json', '/elsewhere/x_random_case.png')
    """
    paths = config.params("paths")
    configured = Path(paths["output_filename"])
    if output_filename is None or Path(output_filename).resolve() == configured.resolve():
        return str(paths["report"]), str(paths["figure"])
    out = Path(output_filename)
    return (str(out.with_name(f"{out.stem}_build_report.json")),
            str(out.with_name(f"{out.stem}_random_case.png")))


def report_lines(output: str | os.PathLike, report: BuildReport, report_path: str = "") -> list[str]:
    """The build's summary as printed: one line, then one per failed case."""
    lines = [f"{output}: {report.summary()}" + (f"; report {report_path}" if report_path else "")]
    return lines + [f"  FAILED {case_id}: {reason}" for case_id, reason in report.failed.items()]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status.

    0 when the build ran (failed cases are listed in the summary and the report), 1 with
    ``--strict`` when any case failed, 2 when the build could not run or stopped (bad
    configuration, missing input folder, disk full: the message names the file).
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        report = run_build(
            config,
            data_directory=args.data_directory,
            output_filename=args.output_filename,
            workers=args.workers,
            backend=args.backend,
            scheduler=args.scheduler,
            rebuild=args.rebuild,
            progress=not args.no_progress,
            source=args.source,
        )
    except (DsbprepError, FileNotFoundError, ValueError, ImportError) as err:
        print(f"dsbprep.build: error: {err}", file=sys.stderr)
        return 2
    output = args.output_filename or config.get("paths", "output_filename")
    report_default, figure_default = default_outputs(config, args.output_filename)
    report_path = report_default if args.report is None else args.report
    if report_path:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(json.dumps(report.to_json(), indent=2))
    print("\n".join(report_lines(output, report, report_path)))
    if args.print_random_image:
        try:
            print_random_case(output, args.figure or figure_default, args.seed)
        except DsbprepError as err:
            print(f"dsbprep.build: error: {err}", file=sys.stderr)
            return 2
    return 1 if args.strict and report.failed else 0


if __name__ == "__main__":
    from .cli import exit_with

    exit_with(main())
