"""Writing a file so that readers never see half of it: the one atomic-write helper of spix."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

PARTIAL_MARK = ".partial-"  # in the name of a file still being written


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write` on a temporary file in the same folder, then rename it to `path` (atomic on one filesystem).

    A crash leaves either the old file or the new one, plus at most a `*.partial-*` file that
    `remove_partial_files` clears; the temporary file is removed when `write` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}{PARTIAL_MARK}{uuid.uuid4().hex}")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda handle: handle.write(text.encode()))


def remove_partial_files(folder: Path, pattern: str = "*/*") -> None:
    """Temporary files that a killed process left behind, in the files matching `pattern` under `folder`."""
    for partial in Path(folder).glob(f"{pattern}{PARTIAL_MARK}*"):
        partial.unlink(missing_ok=True)
