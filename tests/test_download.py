"""`spix download ade20k` against a loopback HTTP server that we make misbehave on purpose."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import stat
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spix.cli.main import app
from spix.pipeline.dataset import layout_problems
from spix.pipeline.download import (
    ADE20K,
    OFFICIAL_URL,
    BadArchive,
    DownloadError,
    archive_urls,
    download_file,
    fetch_and_unpack,
    is_unsafe_member,
)

TOP = "ADEChallengeData2016"


# ---------------------------------------------------------------- archives built by the test


def _png_bytes(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def ade_members(prefix: str = f"{TOP}/") -> dict[str, bytes]:
    """A tiny ADE-layout data set: one image and label per split, plus a noisy blob to give the zip some bulk."""
    rng = np.random.default_rng(0)
    members = {}
    for split in ("training", "validation"):
        image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        label = rng.integers(0, 4, (16, 16), dtype=np.uint8)
        members[f"{prefix}images/{split}/ADE_{split}_1.jpg"] = _png_bytes(image, "JPEG")
        members[f"{prefix}annotations/{split}/ADE_{split}_1.png"] = _png_bytes(label, "PNG")
    members[f"{prefix}objectInfo150.csv"] = b"Idx,Ratio,Train,Val,Name\n1,0.5,1,1,wall\n"
    members[f"{prefix}noise.bin"] = rng.integers(0, 256, 40_000, dtype=np.uint8).tobytes()
    return members


def make_zip(members: dict[str, bytes], extra: list[zipfile.ZipInfo] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for info in extra:
            zf.writestr(info, b"payload")
    return buffer.getvalue()


def corrupt(data: bytes, member_bytes: bytes) -> bytes:
    """Flip bytes inside a stored member's data, so only its CRC reveals the damage."""
    at = data.index(member_bytes) + len(member_bytes) // 2
    return data[:at] + bytes(b ^ 0xFF for b in data[at : at + 16]) + data[at + 16 :]


# ---------------------------------------------------------------- the loopback server


class Handler(BaseHTTPRequestHandler):
    """Serves server.files with Range support; server.misbehave names what goes wrong (each at most once)."""

    def do_GET(self) -> None:
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None or "403" in server.misbehave:
            self.send_error(404 if body is None else 403)
            return
        if server.take("503"):
            self.send_error(503)
            return
        start = 0
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if wanted and "ignore_range" not in server.misbehave:
            start = int(wanted.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if server.take("drop"):
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.misbehave: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []

    def take(self, fault: str) -> bool:
        """True once for each fault in misbehave."""
        if fault in self.misbehave:
            self.misbehave.discard(fault)
            return True
        return False

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def server():
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def fetch(server: Server, dest: Path, **kwargs) -> bool:
    url = server.url("/ADEChallengeData2016.zip")
    return fetch_and_unpack(ADE20K, url, dest, backoff_s=0.01, timeout_s=5, **{"retries": 5, **kwargs})


def assert_unpacked(dest: Path, members: dict[str, bytes], under: str = "") -> None:
    """Every member's bytes arrived intact (in dest/under), and nothing but the data folder is left in dest."""
    for name, data in members.items():
        assert (dest / under / name).read_bytes() == data
    assert layout_problems(dest / TOP) == []
    assert sorted(p.name for p in dest.iterdir()) == [TOP]


def assert_nothing_left(dest: Path) -> None:
    """No data folder, no archive, no scratch folder: a failed run leaves dest empty."""
    assert not dest.exists() or list(dest.iterdir()) == []


# ---------------------------------------------------------------- tests of the functions


def test_official_and_overridden_addresses() -> None:
    official = [url for _, url in archive_urls(None, with_test=True)]
    assert official == [
        "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
        "http://data.csail.mit.edu/places/ADEchallenge/release_test.zip",
    ]
    assert OFFICIAL_URL == official[0]
    assert [u for _, u in archive_urls("http://h:1/x/", True)] == [
        "http://h:1/x/ADEChallengeData2016.zip",
        "http://h:1/x/release_test.zip",
    ]
    assert [u for _, u in archive_urls("https://h/m/ade.zip", False)] == ["https://h/m/ade.zip"]
    with pytest.raises(DownloadError, match="not an http"):
        archive_urls("file:///etc/passwd", False)


@pytest.mark.parametrize(
    ("name", "unsafe"),
    [
        (f"{TOP}/images/training/a.jpg", False),
        (f"{TOP}/images/", False),
        ("a..b/c..jpg", False),
        ("../evil.txt", True),
        (f"{TOP}/images/../../evil.txt", True),
        ("a\\..\\..\\evil.txt", True),
        ("/etc/passwd", True),
        ("\\windows\\evil", True),
        ("C:/evil.txt", True),
        ("c:evil.txt", True),
    ],
)
def test_unsafe_member_names(name: str, unsafe: bool) -> None:
    assert is_unsafe_member(zipfile.ZipInfo(name)) is unsafe


def test_symlink_member_is_unsafe() -> None:
    link = zipfile.ZipInfo(f"{TOP}/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    regular = zipfile.ZipInfo(f"{TOP}/file")
    regular.external_attr = (stat.S_IFREG | 0o644) << 16
    assert is_unsafe_member(link) and not is_unsafe_member(regular)


def test_full_download_unpacks_the_exact_bytes(server: Server, tmp_path: Path) -> None:
    members = ade_members()
    data = make_zip(members)
    server.files["/ADEChallengeData2016.zip"] = data
    seen = []
    assert fetch(server, tmp_path, sha256=hashlib.sha256(data).hexdigest(), progress=lambda d, t: seen.append((d, t)))
    assert_unpacked(tmp_path, members)
    assert seen[-1] == (len(data), len(data))
    assert server.requests == [("/ADEChallengeData2016.zip", None)]


def test_dropped_connection_resumes_with_range(server: Server, tmp_path: Path) -> None:
    members = ade_members()
    data = make_zip(members)
    server.files["/ADEChallengeData2016.zip"] = data
    server.misbehave = {"drop"}
    notes = []
    assert fetch(server, tmp_path, note=notes.append)
    assert_unpacked(tmp_path, members)
    assert [r for _, r in server.requests] == [None, f"bytes={len(data) // 2}-"]
    assert any("retry 1/5" in n for n in notes)


def test_interrupted_earlier_run_is_resumed(server: Server, tmp_path: Path) -> None:
    data = make_zip(ade_members())
    server.files["/ADEChallengeData2016.zip"] = data
    (tmp_path / "ADEChallengeData2016.zip.part").write_bytes(data[:1000])
    assert fetch(server, tmp_path)
    assert [r for _, r in server.requests] == ["bytes=1000-"]
    assert layout_problems(tmp_path / TOP) == []


def test_server_ignoring_range_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    members = ade_members()
    data = make_zip(members)
    server.files["/ADEChallengeData2016.zip"] = data
    server.misbehave = {"drop", "ignore_range"}
    assert fetch(server, tmp_path)
    assert_unpacked(tmp_path, members)
    assert len(server.requests) == 2


def test_complete_part_answered_416_is_not_downloaded_again(server: Server, tmp_path: Path) -> None:
    data = make_zip(ade_members())
    server.files["/x.zip"] = data
    part = tmp_path / "x.zip.part"
    part.write_bytes(data)
    assert download_file(server.url("/x.zip"), part, retries=5, timeout_s=5, backoff_s=0.01) == len(data)
    assert part.read_bytes() == data


def test_stale_part_larger_than_the_file_starts_over(server: Server, tmp_path: Path) -> None:
    data = make_zip(ade_members())
    server.files["/x.zip"] = data
    part = tmp_path / "x.zip.part"
    part.write_bytes(b"\0" * (len(data) + 10))
    assert download_file(server.url("/x.zip"), part, retries=5, timeout_s=5, backoff_s=0.01) == len(data)
    assert part.read_bytes() == data


def test_server_error_is_retried(server: Server, tmp_path: Path) -> None:
    server.files["/x.zip"] = b"0123456789"
    server.misbehave = {"503"}
    part = tmp_path / "x.zip.part"
    assert download_file(server.url("/x.zip"), part, retries=5, timeout_s=5, backoff_s=0.01) == 10
    assert part.read_bytes() == b"0123456789" and len(server.requests) == 2


def test_retries_run_out(server: Server, tmp_path: Path) -> None:
    server.files["/x.zip"] = b"0123456789"
    server.misbehave = {"503"}
    with pytest.raises(DownloadError, match="after 0 retries: HTTP 503"):
        download_file(server.url("/x.zip"), tmp_path / "x.zip.part", retries=0, timeout_s=5)


def test_corrupted_archive_is_deleted_and_nothing_unpacked(server: Server, tmp_path: Path) -> None:
    members = ade_members()
    server.files["/ADEChallengeData2016.zip"] = corrupt(make_zip(members), members[f"{TOP}/noise.bin"])
    with pytest.raises(BadArchive, match="CRC"):
        fetch(server, tmp_path)
    assert_nothing_left(tmp_path)


def test_wrong_sha256_is_refused(server: Server, tmp_path: Path) -> None:
    server.files["/ADEChallengeData2016.zip"] = make_zip(ade_members())
    with pytest.raises(BadArchive, match="sha256"):
        fetch(server, tmp_path, sha256="0" * 64)
    assert_nothing_left(tmp_path)


def test_member_escaping_dest_is_refused(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    evil = zipfile.ZipInfo(f"{TOP}/images/training/../../../evil.txt")
    server.files["/ADEChallengeData2016.zip"] = make_zip(ade_members(), [evil])
    with pytest.raises(BadArchive, match="outside"):
        fetch(server, dest)
    assert_nothing_left(dest)
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*"))


def test_archive_without_the_layout_is_refused(server: Server, tmp_path: Path) -> None:
    members = {k: v for k, v in ade_members().items() if "/validation/" not in k}
    server.files["/ADEChallengeData2016.zip"] = make_zip(members)
    with pytest.raises(BadArchive, match="validation"):
        fetch(server, tmp_path)
    assert_nothing_left(tmp_path)


def test_archive_without_top_folder_is_placed_under_it(server: Server, tmp_path: Path) -> None:
    members = ade_members(prefix="")
    server.files["/ADEChallengeData2016.zip"] = make_zip(members)
    assert fetch(server, tmp_path)
    assert_unpacked(tmp_path, members, under=TOP)


def test_incomplete_existing_folder_is_not_touched(server: Server, tmp_path: Path) -> None:
    (tmp_path / TOP / "images").mkdir(parents=True)
    server.files["/ADEChallengeData2016.zip"] = make_zip(ade_members())
    with pytest.raises(DownloadError, match="exists but is incomplete"):
        fetch(server, tmp_path)
    assert server.requests == []


# ---------------------------------------------------------------- tests of the command line


def run_cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["download", "ade20k", *args], env=env)


def test_cli_downloads_then_does_nothing_the_second_time(server: Server, tmp_path: Path) -> None:
    members = ade_members()
    server.files["/ADEChallengeData2016.zip"] = make_zip(members)
    url = server.url("/ADEChallengeData2016.zip")
    first = run_cli("--dest", str(tmp_path), "--url", url)
    assert first.exit_code == 0, first.output
    assert_unpacked(tmp_path, members)
    second = run_cli("--dest", str(tmp_path), "--url", url)
    assert second.exit_code == 0 and f"{tmp_path / TOP} is already there" in second.stdout
    assert len(server.requests) == 1


def test_cli_with_test_archive_from_env_folder_url(server: Server, tmp_path: Path) -> None:
    server.files["/ade/ADEChallengeData2016.zip"] = make_zip(ade_members())
    test_image = _png_bytes(np.zeros((8, 8, 3), np.uint8), "JPEG")
    server.files["/ade/release_test.zip"] = make_zip({"release_test/testing/ADE_test_1.jpg": test_image})
    env = {"SPIX_ADE20K_URL": server.url("/ade/")}
    result = run_cli("--dest", str(tmp_path), "--with-test", "--keep-archive", env=env)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "release_test" / "testing" / "ADE_test_1.jpg").read_bytes() == test_image
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [TOP, "release_test", "ADEChallengeData2016.zip", "release_test.zip"]
    )


@pytest.mark.parametrize(("status", "reason"), [(404, "Not Found"), (403, "Forbidden")])
def test_cli_http_refusal_is_one_clear_line(server: Server, tmp_path: Path, status: int, reason: str) -> None:
    server.files["/ADEChallengeData2016.zip"] = b"never served"
    server.misbehave = {str(status)}
    url = server.url("/ADEChallengeData2016.zip" if status == 403 else "/missing.zip")
    result = run_cli("--dest", str(tmp_path), "--url", url)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"error: HTTP {status} {reason} for {url}"]
    assert len(server.requests) == 1  # not retried
    assert_nothing_left(tmp_path)


def test_cli_unreachable_host_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("--dest", str(tmp_path), "--url", f"http://127.0.0.1:{port}/a.zip")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"error: connection to 127.0.0.1:{port} refused"]


def test_cli_corrupted_archive_exits_1(server: Server, tmp_path: Path) -> None:
    members = ade_members()
    server.files["/ADEChallengeData2016.zip"] = corrupt(make_zip(members), members[f"{TOP}/noise.bin"])
    result = run_cli("--dest", str(tmp_path), "--url", server.url("/ADEChallengeData2016.zip"))
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "corrupt" in result.stderr
    assert_nothing_left(tmp_path)


def test_cli_rejects_a_malformed_sha256(tmp_path: Path) -> None:
    result = run_cli("--dest", str(tmp_path), "--sha256", "abc")
    assert result.exit_code == 2 and "64 hexadecimal" in result.stderr
