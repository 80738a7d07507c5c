"""Build a dsbprep dataset: discover cases, process them in parallel, append them to one file.

``python -m dsbprep.build`` (or ``make dataset``). One process - this one - is
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

Test hook (fault injection, used by tests/test_reliability.py): when the
environment variable ``DSBPREP_TEST_KILL_CASES`` holds a comma-separated list
of case ids, the process running one of those cases SIGKILLs itself at the
start of the case, every time; an id written ``ID:once`` does it only the first
time (a marker file ``ID.killed`` in the folder ``DSBPREP_TEST_KILL_ONCE_DIR``
remembers it). Never set these outside tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
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

__all__ = ["BuildReport", "run_build", "main"]

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


#: Test hook: comma-separated case ids whose process SIGKILLs itself (see the module docstring).
KILL_CASES_ENV = "DSBPREP_TEST_KILL_CASES"
#: Test hook: folder of the marker files of the ``ID:once`` entries.
KILL_ONCE_DIR_ENV = "DSBPREP_TEST_KILL_ONCE_DIR"
#: Reason recorded for a case whose worker process died on both tries.
WORKER_DIED = "worker process died: killed or out of memory"
#: Seconds an idle loky worker waits for work before exiting (joblib's default).
_IDLE_WORKER_TIMEOUT_S = 300
#: Environment variables that size the thread pools of numerical libraries in workers.
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


#: What a worker returns for a task: (task, encoded case or None, error message or "").
Result = tuple[Task, EncodedCase | None, str]


def _fault_injection(case_id: str) -> None:
    """Test hook: SIGKILL this process when ``case_id`` is listed in ``DSBPREP_TEST_KILL_CASES``."""
    listed = os.environ.get(KILL_CASES_ENV, "").split(",")
    if f"{case_id}:once" in listed:
        marker = Path(os.environ[KILL_ONCE_DIR_ENV]) / f"{case_id}.killed"
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    elif case_id not in listed:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _run_task(source: Any, task: Task, spec: ChunkSpec) -> Result:
    """Worker entry point: never raises for a bad case, returns (task, encoded case, error).

    The case is encoded here, in the worker, into the output file's compressed chunks
    (``spec``): the single writer only stores bytes, and a case travels at its
    compressed size (see :mod:`dsbprep.encode`).
    """
    _fault_injection(task.case_id)
    try:
        case = source.process(task)
    except DsbprepError as err:
        return task, None, str(err)
    except MemoryError:
        return task, None, f"{task.case_id}: out of memory while processing"
    except Exception as err:  # a bug or an unforeseen input must not stop the whole build
        logger.debug("case %s failed:\n%s", task.case_id, traceback.format_exc())
        return task, None, f"{task.case_id}: unexpected {type(err).__name__}: {err}"
    try:
        return task, encode_case(case, spec), ""
    except (ValueError, DsbprepError) as err:
        return task, None, f"{task.case_id}: cannot store: {err}"
    except MemoryError:
        return task, None, f"{task.case_id}: out of memory while encoding"


def _results_inline(source: Any, tasks: list[Task], spec: ChunkSpec) -> Iterator[Result]:
    for task in tasks:
        yield _run_task(source, task, spec)


def _loky_executor(workers: int) -> Any:
    """The process pool (loky's reusable executor: a fresh one if the last one broke)."""
    from joblib.externals.loky import cpu_count, get_reusable_executor

    threads = str(max(cpu_count() // workers, 1))
    env = {var: os.environ.get(var, threads) for var in _THREAD_VARS}
    return get_reusable_executor(max_workers=workers, timeout=_IDLE_WORKER_TIMEOUT_S, env=env)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _death_note(err: BaseException) -> str:
    """Short description of a broken pool: loky's worker exit codes when it gives them."""
    codes = re.search(r"exit codes of the workers are (\{.*?\})", str(err))
    return f"worker exit codes {codes.group(1)}" if codes else _first_line(err)


def _results_loky(source: Any, tasks: list[Task], spec: ChunkSpec, workers: int,
                  max_pending: int) -> Iterator[Result]:
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

    queue = deque(tasks)
    in_flight: dict[Any, Task] = {}
    suspects: deque[Task] = deque()
    deaths: dict[str, int] = {}  # deaths of a worker running the case alone
    limit = max(workers, max_pending)
    try:
        while queue or in_flight:
            while queue and len(in_flight) < limit:
                task = queue.popleft()
                try:
                    in_flight[_loky_executor(workers).submit(_run_task, source, task, spec)] = task
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
                result = _loky_executor(workers).submit(_run_task, source, task, spec).result()
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


def _results_dask(source: Any, tasks: list[Task], spec: ChunkSpec, scheduler: str,
                  max_pending: int) -> Iterator[Result]:
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
    source: str | None = None,
) -> BuildReport:
    """Build (or resume) a dataset file.

    Parameters
    ----------
    config : Config
        Parsed configuration; the arguments below override its ``[paths]``/``[build]`` values.
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
    source : str, optional
        Source name (default ``[build] source``).

    Returns
    -------
    BuildReport
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    build = config.params("build")
    paths = config.params("paths")
    data_directory = Path(data_directory or paths["data_directory"])
    output_filename = Path(output_filename or paths["output_filename"])
    workers = int(workers or build["workers"])
    backend = backend or build["backend"]
    scheduler = scheduler or build["scheduler"]
    config.parser.set("build", "workers", str(workers))  # sources size their thread pools by it
    src = get_source(source or build["source"], config)

    if src.name == "lung" and _is_empty(data_directory):
        from .sample import write_sample_cohort

        logger.warning("%s is empty or absent: writing the embedded default cohort of %d "
                       "SYNTHETIC chest CT scans there", data_directory, build["sample_patients"])
        write_sample_cohort(data_directory, n_patients=int(build["sample_patients"]),
                            seed=int(build["sample_seed"]))
    tasks = src.discover(data_directory)
    output_filename.parent.mkdir(parents=True, exist_ok=True)
    report = BuildReport()
    writer = DatasetWriter(
        output_filename,
        image_dtype=src.image_dtype,
        chunks=src.chunks,
        compression=build["compression"],
        kind=src.kind,
        pad_value=src.pad_value,
        attrs={"config": config.text(), "source": src.name},
    )
    with writer:
        done = writer.done()
        todo = []
        for task in tasks:
            if not rebuild and done.get(task.case_id) == task.fingerprint:
                report.skipped.append(task.case_id)
            else:
                todo.append(task)
        logger.info("%d cases found, %d already stored, %d to build", len(tasks), len(report.skipped), len(todo))
        if backend == "dask":
            if not scheduler:
                raise ValueError("--backend dask needs --scheduler ADDRESS (e.g. tcp://host:8786)")
            results: Iterable = _results_dask(src, todo, writer.spec, scheduler, int(build["max_pending"]))
        elif workers <= 1 or len(todo) <= 1:
            results = _results_inline(src, todo, writer.spec)
        elif backend == "loky":
            results = _results_loky(src, todo, writer.spec, workers, int(build["max_pending"]))
        else:
            raise ValueError(f"unknown backend {backend!r}; expected 'loky' or 'dask'")
        splits = config.params("splits")
        with tqdm(total=len(todo), unit="case", disable=not progress, file=sys.stderr,
                  desc=f"building {output_filename.name}") as bar:
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
    report.seconds = time.perf_counter() - t0
    return report


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
                   help="write the build report as JSON to this file ('' for none; default [paths] report)")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 when any case failed (default: 0 once the build ran)")
    p.add_argument("--print_random_image", action="store_true",
                   help="unit test: print a random stored case and save a PNG of it with its mask")
    p.add_argument("--figure", default=None, help="PNG path for --print_random_image")
    p.add_argument("--seed", type=int, default=None, help="seed for --print_random_image")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


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
    report_path = args.report if args.report is not None else config.get("paths", "report")
    if report_path:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(json.dumps(report.to_json(), indent=2))
    print(f"{output}: {report.summary()}" + (f"; report {report_path}" if report_path else ""))
    for case_id, reason in report.failed.items():
        print(f"  FAILED {case_id}: {reason}")
    if args.print_random_image:
        try:
            print_random_case(output, args.figure or config.get("paths", "figure"), args.seed)
        except DsbprepError as err:
            print(f"dsbprep.build: error: {err}", file=sys.stderr)
            return 2
    return 1 if args.strict and report.failed else 0


if __name__ == "__main__":
    _status = main()
    from .store import FILES_LEFT_OPEN

    if FILES_LEFT_OPEN:  # HDF5 would crash at exit trying to flush a file it cannot write
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_status)
    raise SystemExit(_status)
