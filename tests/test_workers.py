"""Worker processes end with the run: they die within seconds of their parent's death (SIGKILL, as the OOM killer
sends it), and Ctrl-C (SIGINT to the whole process group) is left to the parent: no worker stays, none prints a
traceback. Real `preprocess --workers 2` processes, on Linux (they are read from /proc)."""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.workers import BatchPool
from tests.conftest import DEMO_TOKENIZER, REPO

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")

# Each rendering loops a little per message, so that the workers are busy for many seconds on a small input.
BUSY_TEMPLATE = ("{% for m in messages %}{% for i in range(100000) %}{% endfor %}<|{{ m.role }}|>\n{{ m.content }}"
                 "{% endfor %}")


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running, or stopped; not gone and not a zombie waiting for whoever adopted it to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def busy_run(tmp_path):
    """Start `preprocess --workers 2` in its own process group on a busy input; yield (process, worker pids)."""
    data = tmp_path / "chats.jsonl"
    row = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]}
    data.write_text((json.dumps(row) + "\n") * 3000)
    (tmp_path / "busy.jinja").write_text(BUSY_TEMPLATE)
    (tmp_path / "run.yaml").write_text("output:\n  batch_size: 16\n")
    command = [sys.executable, "-m", "pipeline", "preprocess", str(data), "--tokenizer", str(DEMO_TOKENIZER),
               "--chat-template", str(tmp_path / "busy.jinja"), "--config", str(tmp_path / "run.yaml"),
               "--workers", "2", "--out", str(tmp_path / "out")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    workers: list[int] = []
    try:
        assert _wait_until(lambda: len(_children(process.pid)) >= 2 or process.poll() is not None, 60)
        workers = _children(process.pid)
        assert process.poll() is None and len(workers) == 2, process.communicate()
        time.sleep(0.5)  # the workers are at work
        yield process, workers
    finally:
        for pid in [process.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        process.communicate()


def test_workers_die_with_their_parent(busy_run):
    process, workers = busy_run
    process.kill()
    process.wait()
    assert _wait_until(lambda: not any(map(_alive, workers)), 5), [p for p in workers if _alive(p)]


def test_ctrl_c_leaves_no_worker_and_no_worker_traceback(busy_run):
    """Ctrl-C while the workers wait for work (the parent paused with SIGSTOP, so they empty their queue first)."""
    process, workers = busy_run
    os.kill(process.pid, signal.SIGSTOP)
    time.sleep(3)
    os.killpg(process.pid, signal.SIGINT)
    os.kill(process.pid, signal.SIGCONT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode != 0
    assert _wait_until(lambda: not any(map(_alive, workers)), 5)
    assert "ForkProcess" not in stderr and "_process_worker" not in stderr, stderr
    assert stderr.count("Traceback") <= 1, stderr  # the parent's own, at most


def test_the_parent_watch_ends_a_process_whose_parent_dies(tmp_path):
    """Where the parent-death signal is not available, a thread watching the parent pid ends the worker."""
    script = ("import os, sys, time\n"
              "from pipeline.workers import watch_parent\n"
              "parent = os.getpid()\n"
              "child = os.fork()\n"
              "if child == 0:\n"
              "    watch_parent(parent, interval=0.1)\n"
              "    time.sleep(60)\n"
              "    os._exit(0)\n"
              "print(child, flush=True)\n"
              "time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    child = int(process.stdout.readline())
    try:
        assert _alive(child)
        process.kill()
        process.wait()
        assert _wait_until(lambda: not _alive(child), 5)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
        process.stdout.close()


class _Add:
    """A task that holds something (as the chain holds the tokenizer)."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, batch: list[int]) -> list[int]:
        return [x + self.n for x in batch]


def _times_held(task: _Add, batch: list[int]) -> list[int]:
    return [x * task.n for x in batch]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_pool_runs_another_job_with_what_its_task_holds(workers):
    with BatchPool(_Add(3), workers=workers, build=functools.partial(_Add, 3)) as pool:
        assert list(pool.map([[1, 2], [3]], using=_times_held)) == [[3, 6], [9]]
        assert list(pool.map([[1], [2]])) == [[4], [5]]  # the task itself, on the same workers
