"""Worker processes that run one task on batches, in input order, and end with the run: they die with the process
that started them and leave Ctrl-C to it.

A worker waits on its task queue for ever if its parent is killed (by the OOM killer, `kill -9`), holding the output
pipes open, so that `| tee` or a CI log reader never sees the end. And Ctrl-C reaches the whole process group: a
waiting worker would die printing a traceback, while the parent is the one that stops the run and its workers.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from pipeline.errors import PipelineError


class BatchPool:
    """`task` run on batch after batch, results in input order. With `workers > 1`, each batch is run whole in a
    worker process while the caller reads and writes; up to two batches per worker are in flight, never more, so
    memory stays bounded. Where the platform can fork, each worker starts as a copy of this process, `task` and
    all it holds (tokenizer, template, proven encoder) included, so it costs no second start-up; elsewhere each
    builds its own with `build` (picklable). A worker that dies fails the run with a clear error instead of hanging
    it."""

    def __init__(self, task: Callable[[Any], Any], *, workers: int, build: Callable[[], Callable[[Any], Any]]):
        self.task, self.workers, self.build = task, workers, build
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "BatchPool":
        global _task
        parent = os.getpid()
        if self.workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            _task = self.task
            self._pool = ProcessPoolExecutor(self.workers, multiprocessing.get_context("fork"),
                                             initializer=_init_worker, initargs=(parent, None))
        elif self.workers > 1:
            self._pool = ProcessPoolExecutor(self.workers, multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(parent, self.build))
        return self

    def __exit__(self, *exc) -> None:
        global _task
        try:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
                self._pool = None
        finally:
            _task = None

    def map(self, batches: Iterable[Any], using: Callable[[Any, Any], Any] | None = None) -> Iterator[Any]:
        """Each batch's result, in input order: the task's, or `using(task, batch)`'s (`using` picklable: another
        job done with what the task holds)."""
        if self._pool is None:
            yield from (self.task(batch) if using is None else using(self.task, batch) for batch in batches)
            return
        pending: deque = deque()
        try:
            for batch in batches:
                job = (run_task, batch) if using is None else (run_using_task, using, batch)
                pending.append(self._pool.submit(*job))
                if len(pending) > 2 * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise PipelineError("a worker process died (killed for memory?); rerun to resume from the last finished "
                                "chunk, with fewer --workers") from None


_task: Callable[[Any], Any] | None = None
"""What this worker process runs on each batch: its parent's (forked) or its own (spawned)."""


def _init_worker(parent: int, build: Callable[[], Callable[[Any], Any]] | None) -> None:
    """First in every worker: it ends with the run (`start_worker`), and encodes on one thread (the workers already
    fill the cores). A spawned worker (`build` given) builds its own task; a forked one has its parent's."""
    global _task
    start_worker(parent)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if build is not None:
        _task = build()


def run_task(batch: Any) -> Any:
    return _task(batch)


def run_using_task(using: Callable[[Any, Any], Any], batch: Any) -> Any:
    return using(_task, batch)


_PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal the kernel sends this process when its parent ends (<linux/prctl.h>)."""


def start_worker(parent: int) -> None:
    """Run first in every worker process; `parent` is the pid of the process starting the workers, read before
    they are started."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not _killed_with_parent():
        watch_parent(parent)
    if os.getppid() != parent:  # the parent died before the worker asked to die with it
        os._exit(1)


def _killed_with_parent() -> bool:
    """Ask Linux for SIGKILL when the parent ends; False where that cannot be asked. The kernel sends it when the
    parent *thread* that forked this process ends: `ProcessPoolExecutor` (Python 3.11) forks its workers in the
    thread that submits the first task (`submit` starts them all when the start method is fork, or one per call),
    which in the pipeline is the one running the whole run. A worker has nothing to clean up: its results would go
    to the parent."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def watch_parent(parent: int, interval: float = 1.0) -> None:
    """Where the kernel cannot be asked: a daemon thread that ends the process once its parent is gone (an orphan
    is adopted by another process, so its parent pid changes)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
