"""Drop Ray's known-spurious lines from a command's output; let everything else through (`spix --verbose`: all).

Two lines, printed on every successful run, read as failures to a user:

1. The actor-restart notice of the C++ core worker (below).
2. The raylet's "WARNING: N PYTHON worker processes have been started on node ..." that the driver's
   error-listener thread prints to Python's sys.stdout: Ray Data and Ray Train start a worker per task and
   actor, so on a small machine the count passes Ray's warning threshold in every normal run. It is
   advice about blocked ray.get() calls, which spix does not make.

The actor notice:

Every Ray Data actor pool makes the driver's core worker (C++) log, at ERROR level and straight to file
descriptor 2, "core_worker.cc: Actor with class name: 'MapWorker(...)' ... has constructor arguments in the
object store and max_restarts > 0" (ray-project/ray#57733: Ray Data always passes its own object refs to the
actor; #53727 is the restart limitation it warns about). It cannot be avoided at the source: the actors must
stay restartable, or an actor that crashes leaves the pool without workers and the run hangs (checked with
Ray 2.60: `max_restarts=0` and one crashing call never finished). No logging setting reaches that line
alone: `RAY_BACKEND_LOG_LEVEL` would hide every native error of the driver too.

So, while the job runs, file descriptor 2 is a pipe read by a thread that forwards every line except that one,
and Python's own `sys.stderr` (progress bar, messages) writes to the real stderr directly.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
from typing import Iterator, TextIO

SPURIOUS = re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store and max_restarts > 0")
WORKER_COUNT_WARNING = re.compile(r"PYTHON worker processes have been started on node")
VERBOSE_ENV = "SPIX_VERBOSE"  # set by `spix --verbose`: nothing is filtered


def forward_lines(source: int, target: int, drop: re.Pattern[bytes]) -> None:
    """Copy lines from file descriptor `source` to `target` until end of file, leaving out those matching `drop`."""
    with open(source, "rb") as reader:
        for line in reader:
            if not drop.search(line):
                os.write(target, line)


@contextlib.contextmanager
def native_stderr_filtered(drop: re.Pattern[bytes] = SPURIOUS) -> Iterator[None]:
    """Within the block, lines that native code writes to stderr and that match `drop` are left out."""
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    python_stderr = sys.stderr
    sys.stderr = io.TextIOWrapper(
        open(os.dup(real), "wb", buffering=0), encoding=python_stderr.encoding, errors=python_stderr.errors,
        line_buffering=True,
    )
    forwarder = threading.Thread(target=forward_lines, args=(read_end, real, drop), daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = python_stderr
        os.dup2(real, 2)  # closes the pipe's last write end: the forwarder reads to the end and stops
        forwarder.join(timeout=5)
        os.close(real)


class LineFilter(io.TextIOBase):
    """A text stream that passes whole lines to `target` except those matching `drop` (thread-safe)."""

    def __init__(self, target: TextIO, drop: re.Pattern[str]):
        self.target, self.drop, self.pending, self.lock = target, drop, "", threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            *lines, self.pending = (self.pending + text).split("\n")
            for line in lines:
                if not self.drop.search(line):
                    self.target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()


@contextlib.contextmanager
def ray_quieted() -> Iterator[None]:
    """Within the block, both spurious Ray lines (module doc) are left out, unless `spix --verbose` was given."""
    if os.environ.get(VERBOSE_ENV):
        yield
        return
    stdout = sys.stdout
    sys.stdout = LineFilter(stdout, WORKER_COUNT_WARNING)
    try:
        with native_stderr_filtered():
            yield
    finally:
        sys.stdout.flush()
        if sys.stdout.pending:
            stdout.write(sys.stdout.pending)
        sys.stdout = stdout
