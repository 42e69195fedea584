"""Download ADE20K's archives, resumably, and unpack them safely where `spix preprocess` looks.

Flow per archive: DEST/<name>.zip.part (resumed with HTTP Range) -> verified (size, optional sha256,
zip CRCs, member names) -> renamed to DEST/<name>.zip -> extracted into a hidden sibling folder ->
layout checked -> renamed to DEST/<folder>. A failure at any step leaves no half-unpacked folder.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import re
import shutil
import socket
import stat
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urljoin, urlsplit
from urllib.request import Request, urlopen

from spix import __version__
from spix.pipeline.dataset import layout_problems

OFFICIAL_URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
CHUNK_BYTES = 1 << 20
BACKOFF_S = 1.0  # first wait before a retry; it doubles with every failed attempt
MAX_BACKOFF_S = 60.0
FATAL_HTTP_STATUS = range(400, 500)  # client errors: asking again gives the same answer
RETRY_HTTP_STATUS = (408, 429)  # ... except these two

Progress = Callable[[int, int | None], None]
Note = Callable[[str], None]


class DownloadError(RuntimeError):
    """A download or unpack failed; the message is one readable line for the user."""


class BadArchive(DownloadError):
    """The archive's bytes are wrong (size, checksum, CRC, unsafe names, layout): it is deleted."""


class _Retryable(Exception):
    """A dropped connection or a server hiccup: worth trying again after a pause."""


class _Unreachable(_Retryable):
    """No connection could be opened at all (DNS failure, refused, no route)."""


def release_test_problems(root: Path) -> list[str]:
    """What keeps `root` from being the unpacked release_test folder (testing/*.jpg)."""
    if not (root / "testing").is_dir():
        return [f"missing folder {root.name}/testing"]
    return []


@dataclass(frozen=True)
class Archive:
    """One downloadable archive: its file name, the folder it unpacks to, and how to check that folder."""

    file_name: str
    folder: str
    problems: Callable[[Path], list[str]]


ADE20K = Archive("ADEChallengeData2016.zip", "ADEChallengeData2016", layout_problems)
ADE20K_TEST = Archive("release_test.zip", "release_test", release_test_problems)


def archive_urls(url: str | None, with_test: bool) -> list[tuple[Archive, str]]:
    """The archives to fetch and their addresses.

    `url` overrides the official address of ADEChallengeData2016.zip; one ending in '/' is a folder
    holding it. release_test.zip is always taken from next to it.
    """
    main = url or OFFICIAL_URL
    if urlsplit(main).scheme not in ("http", "https") or not urlsplit(main).netloc:
        raise DownloadError(f"not an http:// or https:// address: {main}")
    if main.endswith("/"):
        main = urljoin(main, ADE20K.file_name)
    pairs = [(ADE20K, main)]
    if with_test:
        pairs.append((ADE20K_TEST, urljoin(main, ADE20K_TEST.file_name)))
    return pairs


def fetch_and_unpack(
    archive: Archive,
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    retries: int,
    timeout_s: float,
    backoff_s: float = BACKOFF_S,
    keep_archive: bool = False,
    progress: Progress | None = None,
    note: Note | None = None,
) -> bool:
    """Make DEST/<archive.folder> exist and pass its layout check; False when it already did (nothing done)."""
    note = note or (lambda _msg: None)
    target = dest / archive.folder
    if target.exists():
        problems = archive.problems(target)
        if not problems:
            return False
        raise DownloadError(f"{target} exists but is incomplete ({'; '.join(problems)}); move it away and run again")
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"{dest} exists and is not a folder")
    dest.mkdir(parents=True, exist_ok=True)
    zip_path = dest / archive.file_name
    if zip_path.exists():
        note(f"using the archive already downloaded at {zip_path}")
        _verify_or_delete(zip_path, None, sha256, note)
    else:
        part = zip_path.with_name(zip_path.name + ".part")
        note(f"downloading {url} to {part}")
        total = download_file(
            url, part, retries=retries, backoff_s=backoff_s, timeout_s=timeout_s, progress=progress, note=note
        )
        _verify_or_delete(part, total, sha256, note)
        part.rename(zip_path)
    note(f"unpacking {zip_path.name} into {dest}")
    try:
        unpack_archive(zip_path, dest, archive)
    except BadArchive as exc:
        zip_path.unlink(missing_ok=True)
        raise BadArchive(f"{exc}; deleted {zip_path.name}") from None
    if not keep_archive:
        zip_path.unlink()
    return True


def download_file(
    url: str,
    part: Path,
    *,
    retries: int,
    timeout_s: float,
    backoff_s: float = BACKOFF_S,
    progress: Progress | None = None,
    note: Note | None = None,
) -> int | None:
    """Fetch `url` into `part`, resuming what it already holds; the size the server announced (None: unknown).

    Dropped connections and 5xx answers are retried with exponential backoff; the count of retries
    starts again whenever an attempt made the file grow. A host that cannot be reached before any
    answer came, and 4xx answers, fail at once.
    """
    note = note or (lambda _msg: None)
    failures = 0
    reached = False
    while True:
        before = _size(part)
        try:
            return _fetch_once(url, part, timeout_s, progress or (lambda _done, _total: None), note)
        except _Retryable as exc:
            if isinstance(exc, _Unreachable) and not reached:
                raise DownloadError(str(exc)) from None
            reached = reached or not isinstance(exc, _Unreachable)
            failures = 1 if _size(part) > before else failures + 1
            if failures > retries:
                raise DownloadError(f"giving up on {url} after {retries} retries: {exc}") from None
            delay = min(backoff_s * 2 ** (failures - 1), MAX_BACKOFF_S)
            note(f"{exc}; retry {failures}/{retries} in {delay:.1f} s")
            time.sleep(delay)


def _fetch_once(url: str, part: Path, timeout_s: float, progress: Progress, note: Note) -> int | None:
    """One HTTP request appending to `part`; raises _Retryable when the body ends early."""
    offset = _size(part)
    headers = {"User-Agent": f"spix/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout_s)
    except HTTPError as err:
        if err.code == 416 and offset:
            return _complete_after_416(err, part, offset)
        raise _http_failure(url, err) from None
    except (OSError, http.client.HTTPException) as exc:
        raise _connection_failure(url, exc) from None
    with response:
        offset, total = _resume_point(response, part, offset, note)
        if total is not None:
            _check_free_space(part.parent, total - offset)
        done = offset
        progress(done, total)
        with part.open("ab" if offset else "wb") as out:
            while chunk := _read_chunk(response, done, total):
                out.write(chunk)
                done += len(chunk)
                progress(done, total)
    if total is not None and done < total:
        raise _Retryable(f"connection closed after {done} of {total} bytes")
    return total


def _read_chunk(response: http.client.HTTPResponse, done: int, total: int | None) -> bytes:
    try:
        return response.read1(CHUNK_BYTES)  # what has arrived, so a stall loses nothing already received
    except (OSError, http.client.HTTPException) as exc:
        reason = str(exc) or type(exc).__name__
        raise _Retryable(f"connection dropped after {done} of {total or '?'} bytes ({reason})") from None


def _resume_point(response: http.client.HTTPResponse, part: Path, offset: int, note: Note) -> tuple[int, int | None]:
    """Where this response's body starts in the file, and the file's total size."""
    length = _int_or_none(response.headers.get("Content-Length"))
    if response.status != 206:
        if offset:
            note("the server ignored the resume request; starting over")
        return 0, length
    start, total = _parse_content_range(response.headers.get("Content-Range", ""))
    if start != offset:
        part.unlink(missing_ok=True)
        raise _Retryable(f"the server resumed at byte {start}, not {offset}; starting over")
    if total is None and length is not None:
        total = offset + length
    note(f"resuming at byte {offset}")
    return offset, total


def _complete_after_416(err: HTTPError, part: Path, offset: int) -> int:
    """A 416 answer to a resume: the file is complete when the server's size matches what we hold."""
    _, total = _parse_content_range(err.headers.get("Content-Range", ""))
    if total == offset:
        return total
    part.unlink(missing_ok=True)
    raise _Retryable(f"the server cannot resume at byte {offset} (size {total or 'unknown'}); starting over")


def _parse_content_range(value: str) -> tuple[int | None, int | None]:
    """'bytes 10-99/100' -> (10, 100); 'bytes */100' -> (None, 100); '*' or garbage -> None."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    return _int_or_none(match.group(1)), _int_or_none(match.group(2))


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _http_failure(url: str, err: HTTPError) -> Exception:
    message = f"HTTP {err.code} {err.reason} for {url}"
    if err.code in FATAL_HTTP_STATUS and err.code not in RETRY_HTTP_STATUS:
        return DownloadError(message)
    return _Retryable(message)


def _connection_failure(url: str, exc: BaseException) -> _Retryable:
    """Tell 'cannot reach the host at all' (no network, wrong host) from a connection that broke."""
    reason = exc.reason if isinstance(exc, URLError) else exc
    host = urlsplit(url).netloc
    if isinstance(reason, socket.gaierror):
        return _Unreachable(f"cannot resolve {host} (no network?): {reason}")
    if isinstance(reason, ConnectionRefusedError):
        return _Unreachable(f"connection to {host} refused")
    if isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return _Unreachable(f"cannot reach {host} (no network?): {reason.strerror}")
    return _Retryable(f"connection to {host} failed: {str(reason) or type(reason).__name__}")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DownloadError(f"{folder} needs {needed / 1e9:.2f} GB free, has {free / 1e9:.2f} GB")


def _verify_or_delete(path: Path, expected_size: int | None, sha256: str | None, note: Note) -> None:
    """Verify `path`; a bad archive is deleted so that the next run downloads it afresh."""
    note(f"verifying {path.name}")
    try:
        verify_archive(path, expected_size, sha256)
    except BadArchive as exc:
        path.unlink(missing_ok=True)
        raise BadArchive(f"{exc}; deleted it, run again to download it afresh") from None


def verify_archive(path: Path, expected_size: int | None = None, sha256: str | None = None) -> None:
    """Raise BadArchive unless `path` has the expected size and sha256 (when given) and is a sound, safe zip."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise BadArchive(f"{path.name} has {size} bytes, the server announced {expected_size}")
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256.lower():
            raise BadArchive(f"sha256 of {path.name} is {actual}, expected {sha256.lower()}")
    try:
        with zipfile.ZipFile(path) as zf:
            refuse_unsafe_members(zf, path.name)
            broken = zf.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError, OSError) as exc:
        raise BadArchive(f"{path.name} is not a readable zip archive ({exc})") from None
    if broken is not None:
        raise BadArchive(f"{path.name} is corrupt (CRC mismatch in {broken})")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def is_unsafe_member(info: zipfile.ZipInfo) -> bool:
    """A member that could land outside the target folder: absolute, drive letter, '..' part, or symlink."""
    name = info.filename
    parts = re.split(r"[\\/]", name)
    is_symlink = stat.S_ISLNK(info.external_attr >> 16)
    return name.startswith(("/", "\\")) or bool(re.match(r"[A-Za-z]:", name)) or ".." in parts or is_symlink


def refuse_unsafe_members(zf: zipfile.ZipFile, label: str) -> None:
    unsafe = [info.filename for info in zf.infolist() if is_unsafe_member(info)]
    if unsafe:
        shown = ", ".join(repr(name) for name in unsafe[:3])
        raise BadArchive(f"refusing to unpack {label}: {len(unsafe)} member(s) would land outside the folder ({shown})")


def unpack_archive(zip_path: Path, dest: Path, archive: Archive) -> Path:
    """Extract into a hidden folder inside `dest`, check the layout, then rename into DEST/<folder> at once."""
    target = dest / archive.folder
    prefix = f".{archive.folder}.unpacking-"
    for stale in dest.glob(f"{prefix}*"):  # left by a run that was killed mid-way
        shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=dest))
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                refuse_unsafe_members(zf, zip_path.name)
                _check_free_space(dest, sum(info.file_size for info in zf.infolist()))
                zf.extractall(scratch)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            raise BadArchive(f"{zip_path.name} is corrupt ({exc})") from None
        except OSError as exc:
            raise DownloadError(f"cannot unpack {zip_path.name} into {dest}: {exc}") from None
        _data_root(scratch, archive, zip_path.name).rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _data_root(scratch: Path, archive: Archive, label: str) -> Path:
    """The extracted folder that passes the layout check: <folder>/, the archive's root, or its one top folder."""
    tops = [p for p in scratch.iterdir() if p.is_dir() and p.name != "__MACOSX"]
    candidates = [scratch / archive.folder, scratch] + (tops if len(tops) == 1 else [])
    for candidate in candidates:
        if candidate.is_dir() and not archive.problems(candidate):
            return candidate
    problems = archive.problems(scratch / archive.folder)
    raise BadArchive(f"{label} does not hold the expected {archive.folder} layout ({'; '.join(problems)})")
