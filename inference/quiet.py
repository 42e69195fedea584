"""Drop Ray's one known-spurious native log line from this process's stderr; let everything else through.

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
from typing import Iterator

SPURIOUS = re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store and max_restarts > 0")


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
