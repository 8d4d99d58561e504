"""Worker processes that end with the run: they die with the process that started them and leave Ctrl-C to it.

A worker waits on its task queue for ever if its parent is killed (by the OOM killer, `kill -9`), holding the output
pipes open, so that `| tee` or a CI log reader never sees the end. And Ctrl-C reaches the whole process group: a
waiting worker would die printing a traceback, while the parent is the one that stops the run and its workers.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

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
