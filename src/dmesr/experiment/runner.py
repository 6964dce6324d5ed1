"""Run grid cells as parallel `dmesr train` subprocesses.

Subprocesses rather than in-process workers: a crash, an out-of-memory kill or a stuck
native library takes down one cell only, each cell gets its own torch thread count, and
the trainer's own resume logic makes a killed grid restartable cell by cell.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmesr.experiment.cells import Cell
from dmesr.io import is_locked, read_json

LOG_NAME = "experiment.log"


@dataclass
class CellResult:
    key: str
    status: str  # done | skipped (finished before) | stale | busy (another process) | failed
    seconds: float = 0.0
    returncode: int | None = None
    log: str | None = None
    error: str | None = None
    metrics: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "metrics" and v is not None}
        if self.metrics:
            out["test.full.NDCG@10"] = self.metrics.get("test.full.NDCG@10")
        return out


def _env(threads: int) -> dict[str, str]:
    # numpy/BLAS threads follow torch's so that W workers use about the machine's cores
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


def record_failure(cell: Cell, message: str) -> CellResult:
    """A cell that could not start (bad configuration): its error in its log file."""
    log = cell.out / LOG_NAME
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} not started\n{message}\n")
    return CellResult(cell.key, "failed", log=str(log), error=" ".join(message.split())[:300])


class _Stop:
    """Shared by the worker threads: after Ctrl-C no new cell starts and running ones are
    terminated (each keeps its last checkpoint, so the next `dmesr experiment` resumes)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.procs: set[subprocess.Popen[bytes]] = set()
        self.lock = threading.Lock()

    def stop(self) -> None:
        self.event.set()
        with self.lock:
            for proc in self.procs:
                proc.terminate()


def run_cell(cell: Cell, threads: int, stop: _Stop | None = None) -> CellResult:
    """Train one cell; stdout/stderr appended to OUT/experiment.log (kept across resumes)."""
    stop = stop or _Stop()
    if is_locked(cell.out):  # e.g. the same grid started twice: leave it to the other one
        return CellResult(cell.key, "busy", error="running in another process")
    cell.out.mkdir(parents=True, exist_ok=True)
    log = cell.out / LOG_NAME
    argv = cell.argv(threads)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n")
        f.flush()
        with stop.lock:  # checked under the lock: no cell starts after stop()
            if stop.event.is_set():
                f.write("# interrupted before start\n")
                return CellResult(cell.key, "failed", log=str(log), error="interrupted")
            proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=_env(threads))
            stop.procs.add(proc)
        proc.wait()
        with stop.lock:
            stop.procs.discard(proc)
    seconds = time.perf_counter() - t0
    if proc.returncode == 0 and cell.is_done():
        return CellResult(cell.key, "done", seconds, 0, str(log),
                          metrics=read_json(cell.out / "metrics.json"))
    return CellResult(cell.key, "failed", seconds, proc.returncode, str(log),
                      error=_last_line(log))


def _last_line(log: Path) -> str:
    lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    return lines[-1][:300] if lines else "no output"


def run_cells(cells: list[Cell], workers: int, threads: int, progress: bool = True,
              echo: Callable[[str], None] = print) -> list[CellResult]:
    """Run cells, `workers` at a time; one failure never stops the others."""
    if not cells:
        return []
    bar = _bar(len(cells), progress)
    write = bar.write if bar is not None else echo
    results: list[CellResult] = []
    stop = _Stop()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_cell, c, threads, stop): c for c in cells}
        try:
            for fut in as_completed(futures):
                res = fut.result()
                results.append(res)
                write(_line(res))
                if bar is not None:
                    bar.set_postfix(failed=sum(r.status == "failed" for r in results),
                                    refresh=False)
                    bar.update(1)
        except (KeyboardInterrupt, SystemExit):
            stop.stop()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            if bar is not None:
                bar.close()
    order = {c.key: i for i, c in enumerate(cells)}
    return sorted(results, key=lambda r: order[r.key])


def _line(res: CellResult) -> str:
    if res.status == "done":
        ndcg = (res.metrics or {}).get("test.full.NDCG@10", float("nan"))
        return f"done   {res.key}  test NDCG@10={ndcg:.4f}  ({res.seconds:.0f} s)"
    if res.status == "busy":
        return f"busy   {res.key}  {res.error}"
    return f"FAILED {res.key}  exit {res.returncode}: {res.error}  (log: {res.log})"


def _bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="cells", unit="cell", dynamic_ncols=True)
