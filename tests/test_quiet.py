"""Ray's two known-harmless lines are dropped from a command's output, everything else passes, --verbose keeps all."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import os, sys
from spix.pipeline.quiet import ray_quieted
with ray_quieted():
    os.write(2, b"[2026 E 1 1] core_worker.cc:2465: Actor with class name: 'MapWorker(MapBatches(ModelStage))' and ID: 'ab' has constructor arguments in the object store and max_restarts > 0. If ...\\n")
    os.write(2, b"a real native error\\n")
    print("python stderr", file=sys.stderr)
    print("(raylet) WARNING: 8 PYTHON worker processes have been started on node: ab with address: x. This could be ...")
    print("(raylet) a real driver message")
    print("partial", end="")
print(" line")
print("after", file=sys.stderr)
"""


def run_probe(verbose: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SPIX_VERBOSE"} | ({"SPIX_VERBOSE": "1"} if verbose else {})
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return result


def test_only_the_two_spurious_ray_lines_are_dropped() -> None:
    result = run_probe(verbose=False)
    assert sorted(result.stderr.splitlines()) == ["a real native error", "after", "python stderr"]
    assert result.stdout.splitlines() == ["(raylet) a real driver message", "partial line"]


def test_verbose_keeps_every_line() -> None:
    result = run_probe(verbose=True)
    assert len(result.stderr.splitlines()) == 4 and "max_restarts > 0" in result.stderr
    assert len(result.stdout.splitlines()) == 3 and "PYTHON worker processes" in result.stdout
