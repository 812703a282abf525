"""Checksummed downloads (from a local HTTP server, never the internet) and safe tar extraction."""

from __future__ import annotations

import hashlib
import io
import random
import socket
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from imagefit.datasets.archive import download, md5sum, safe_extract, verify_md5
from imagefit.errors import DataError

PAYLOAD = bytes(range(256)) * 300  # 76,800 bytes: several reads, still instant


class _RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.files`` and honours ``Range: bytes=N-`` like a real file server."""

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Range")))  # type: ignore[attr-defined]
        body = self.server.files.get(self.path)  # type: ignore[attr-defined]
        if body is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers["Range"] else 0
        if start >= len(body) and start:
            self.send_error(416)
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    httpd.files = {"/data.bin": PAYLOAD}  # type: ignore[attr-defined]
    httpd.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _url(httpd: ThreadingHTTPServer, path: str = "/data.bin") -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}{path}"


MD5 = hashlib.md5(PAYLOAD).hexdigest()


# --- checksums and downloads -------------------------------------------------------------------


def test_md5sum_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD)
    assert md5sum(path) == MD5
    assert verify_md5(path, MD5.upper())
    assert not verify_md5(path, "0" * 32)
    assert not verify_md5(tmp_path / "missing", MD5)


def test_download_verifies_and_renames(server: ThreadingHTTPServer, tmp_path: Path) -> None:
    path = download(_url(server), tmp_path / "sub" / "data.bin", MD5, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "sub" / "data.bin.part").exists()


def test_verified_file_is_not_downloaded_again(server: ThreadingHTTPServer, tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(PAYLOAD)
    download(_url(server), path, MD5, progress=False)
    assert server.requests == []  # type: ignore[attr-defined]


def test_corrupt_file_is_downloaded_again(server: ThreadingHTTPServer, tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"junk")
    download(_url(server), path, MD5, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert (tmp_path / "data.bin.bad").read_bytes() == b"junk"


def test_checksum_mismatch_is_reported(server: ThreadingHTTPServer, tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    with pytest.raises(DataError, match="MD5 .* expected 0{32}"):
        download(_url(server), path, "0" * 32, progress=False)
    assert not path.exists()
    assert not (tmp_path / "data.bin.part").exists()  # a bad download is not resumed later


def test_partial_download_resumes(server: ThreadingHTTPServer, tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:1000])
    download(_url(server), path, MD5, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/data.bin", "bytes=1000-")]  # type: ignore[attr-defined]


def test_oversized_partial_restarts(server: ThreadingHTTPServer, tmp_path: Path) -> None:
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD + b"extra")  # server answers 416
    path = download(_url(server), tmp_path / "data.bin", MD5, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_file_url_ignores_stale_partial(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(PAYLOAD)
    (tmp_path / "data.bin.part").write_bytes(b"stale")  # file:// cannot resume: start over
    path = download(source.as_uri(), tmp_path / "data.bin", MD5, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_offline_error_names_url_and_manual_path(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that nothing listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar.tar.gz"
    target = tmp_path / "cifar.tar.gz"
    with pytest.raises(DataError) as info:
        download(url, target, MD5, progress=False)
    assert url in str(info.value) and str(target) in str(info.value)
    assert "place the file" in str(info.value)


def test_http_404_is_a_data_error(server: ThreadingHTTPServer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot download .*/missing"):
        download(_url(server, "/missing"), tmp_path / "x", MD5, progress=False)


# --- safe extraction ---------------------------------------------------------------------------


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b"x"):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)


def _write_tar(path: Path, members: list, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_safe_archive_extracts(tmp_path: Path) -> None:
    archive = _write_tar(
        tmp_path / "ok.tar.gz",
        [
            _member("pkg", tarfile.DIRTYPE),
            _member("pkg/a.txt", data=b"alpha"),
            _member("pkg/sub/b.txt", data=b"beta"),
            _member("pkg/link", tarfile.SYMTYPE, "a.txt"),
            _member("pkg/sub/up", tarfile.SYMTYPE, "../a.txt"),
            _member("pkg/hard", tarfile.LNKTYPE, "pkg/a.txt"),
            _member("top.txt", data=b"top"),
        ],
    )
    dest = tmp_path / "dest"
    assert safe_extract(archive, dest) == [dest / "pkg", dest / "top.txt"]
    assert (dest / "pkg" / "sub" / "b.txt").read_bytes() == b"beta"
    assert (dest / "pkg" / "link").read_bytes() == b"alpha"
    assert (dest / "pkg" / "sub" / "up").read_bytes() == b"alpha"
    assert (dest / "pkg" / "hard").read_bytes() == b"alpha"
    assert not any(p.name.endswith(".partial") for p in dest.iterdir())


UNSAFE = {
    "parent": [_member("../x")],
    "nested parent": [_member("ok/../../x")],
    "absolute": [_member("/tmp/imagefit-test-abs")],
    "windows drive": [_member("C:/x")],
    "symlink to /etc": [_member("etc", tarfile.SYMTYPE, "/etc")],
    "symlink up": [_member("d/up", tarfile.SYMTYPE, "../../outside")],
    "symlink chain": [
        _member("d/x", tarfile.SYMTYPE, ".."),
        _member("d/y", tarfile.SYMTYPE, "x/.."),
    ],
    "through a dot link": [_member("d/l", tarfile.SYMTYPE, "."), _member("d/l/../../x")],
    "link loop": [
        _member("a", tarfile.SYMTYPE, "b"),
        _member("b", tarfile.SYMTYPE, "a"),
        _member("a/evil"),
    ],
    "hardlink out": [_member("h", tarfile.LNKTYPE, "../outside")],
    "hardlink abs": [_member("h", tarfile.LNKTYPE, "/etc/passwd")],
    "char device": [_member("dev", tarfile.CHRTYPE)],
    "block device": [_member("dev", tarfile.BLKTYPE)],
    "fifo": [_member("fifo", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_members_are_refused_before_writing(tmp_path: Path, case: str) -> None:
    members = [_member("first.txt"), *UNSAFE[case]]  # a safe member first: it must not appear
    archive = _write_tar(tmp_path / "bad.tar", members, mode="w")
    dest = tmp_path / "inner" / "dest"
    before = _tree(tmp_path)
    with pytest.raises(DataError, match="refusing unsafe member") as info:
        safe_extract(archive, dest)
    assert repr(UNSAFE[case][-1][0].name) in str(info.value)
    assert _tree(tmp_path) == before  # nothing written anywhere, not even dest itself
    assert not Path("/tmp/imagefit-test-abs").exists()


def test_existing_top_level_is_not_overwritten(tmp_path: Path) -> None:
    archive = _write_tar(tmp_path / "a.tar.gz", [_member("pkg/a.txt", data=b"new")])
    (tmp_path / "dest" / "pkg").mkdir(parents=True)
    (tmp_path / "dest" / "pkg" / "a.txt").write_bytes(b"old")
    with pytest.raises(DataError, match="will not overwrite"):
        safe_extract(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "pkg" / "a.txt").read_bytes() == b"old"


def test_failed_extraction_leaves_no_partial_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _write_tar(tmp_path / "a.tar.gz", [_member("pkg/a.txt"), _member("pkg/b.txt")])
    real = tarfile.TarFile.extractall

    def crash_after_writing(self: tarfile.TarFile, *args: object, **kwargs: object) -> None:
        real(self, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(tarfile.TarFile, "extractall", crash_after_writing)
    with pytest.raises(OSError, match="disk full"):
        safe_extract(archive, tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []  # no pkg/, no staging folder


@pytest.mark.parametrize("content", [b"not a tar file at all", b""])
def test_unreadable_archive_is_a_data_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.tar.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match="x.tar.gz"):
        safe_extract(path, tmp_path / "dest")


def test_truncated_archive_is_a_data_error(tmp_path: Path) -> None:
    noise = random.Random(0).randbytes(100_000)  # incompressible: the cut hits member data
    archive = _write_tar(tmp_path / "a.tar.gz", [_member("pkg/a.bin", data=noise)])
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(DataError, match="a.tar.gz"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "dest" / "pkg").exists()
