"""Downloading a file with a checksum, and extracting a tarball without trusting its contents.

Both are written for any archive (CIFAR-10 is the first user). A download goes to
``<file>.part`` and is renamed only once its MD5 matches, so a file at the final path is always
complete; an interrupted download resumes from the ``.part`` file when the server allows it.
An extraction is checked member by member before anything is written, then written to a hidden
temporary folder next to the destination and renamed into place, so a crash never leaves a
half-extracted tree under the name of a complete one.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import posixpath
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from tqdm.auto import tqdm

from imagefit.errors import DataError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TIMEOUT_S = 60.0
_MAX_LINK_DEPTH = 40  # the same order as the kernel's limit on nested symlinks (ELOOP)


# --- checksums and downloads -------------------------------------------------------------------


def md5sum(path: str | Path) -> str:
    """Hex MD5 of a file's bytes."""
    digest = hashlib.md5(usedforsecurity=False)  # an integrity check, not a security one
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: str | Path, md5: str) -> bool:
    """True when ``path`` exists and its MD5 is ``md5``."""
    return Path(path).is_file() and md5sum(path) == md5.lower()


def download(url: str, path: str | Path, md5: str, progress: bool = True) -> Path:
    """Make ``path`` a verified copy of ``url``; return ``path``.

    A file already at ``path`` with the right MD5 is kept (nothing is downloaded). One with a
    wrong MD5 is moved aside and downloaded again. Raises :class:`DataError` when the network
    fails (naming the URL and where to put the file by hand) or the download's MD5 is wrong.
    """
    path = Path(path)
    bad = path.with_name(path.name + ".bad")
    if path.is_file():
        if verify_md5(path, md5):
            log.info("%s: already downloaded, MD5 verified", path)
            return path
        log.warning("%s: MD5 differs from %s; moved to %s, downloading again", path, md5, bad)
        os.replace(path, bad)  # kept for inspection, never used
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        _fetch(url, part, progress)
    except DataError as error:
        if bad.is_file():  # say where the user's file went, or it looks like it vanished
            raise DataError(f"{error} (a file with a wrong MD5 was moved to {bad})") from error
        raise
    actual = md5sum(part)
    if actual != md5.lower():
        part.unlink()  # a resumed download that went wrong must restart from zero next time
        raise DataError(
            f"download of {url} is corrupt: MD5 {actual}, expected {md5}. Try again, or download "
            f"it by other means and place it at {path}"
        )
    os.replace(part, path)
    log.info("downloaded %s to %s (MD5 verified)", url, path)
    return path


def _fetch(url: str, part: Path, progress: bool, resume: bool = True) -> None:
    """Append ``url``'s bytes to ``part``, resuming from its current size when possible."""
    offset = part.stat().st_size if resume and part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "imagefit"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            # Only 206 means the server honoured the range; anything else sends the whole file.
            if getattr(response, "status", None) != 206:
                offset = 0
            _copy(response, part, offset, progress)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the .part is not a prefix of this file: start over
            _fetch(url, part, progress, resume=False)
            return
        raise _offline_error(url, part, error) from error
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        raise _offline_error(url, part, error) from error


def _copy(response: Any, part: Path, offset: int, progress: bool) -> None:
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length else None
    name = part.name.removesuffix(".part")
    with (
        open(part, "ab" if offset else "wb") as handle,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=name,
            disable=None if progress else True,
        ) as bar,
    ):
        while chunk := response.read(CHUNK):
            handle.write(chunk)
            bar.update(len(chunk))


def _offline_error(url: str, part: Path, error: Exception) -> DataError:
    final = part.with_name(part.name.removesuffix(".part"))
    return DataError(
        f"cannot download {url}: {getattr(error, 'reason', error)}. If this machine is offline, "
        f"download that URL elsewhere and place the file at {final}; it will be checked and "
        "used without a download"
    )


# --- safe extraction ---------------------------------------------------------------------------


def safe_extract(archive_path: str | Path, dest: str | Path) -> list[Path]:
    """Extract a tar archive (any compression) into ``dest``; return its top-level paths.

    Every member is checked before anything is written: absolute names, ``..`` components,
    links that resolve outside ``dest``, and device or FIFO members raise :class:`DataError`
    naming the member. Existing top-level entries of the same names are never overwritten.
    """
    archive_path, dest = Path(archive_path), Path(dest)
    with _open_tar(archive_path) as tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, EOFError, OSError) as error:  # truncated or corrupt
            raise DataError(f"{archive_path}: damaged tar archive ({error})") from error
        check_members(members, archive_path)
        tops = sorted({_parts(m.name)[0] for m in members if _parts(m.name)})
        clashes = [dest / top for top in tops if os.path.lexists(dest / top)]
        if clashes:
            raise DataError(f"{archive_path}: will not overwrite existing {clashes[0]}")
        dest.mkdir(parents=True, exist_ok=True)
        return _extract_then_rename(tar, members, tops, dest, archive_path)


def _open_tar(archive_path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive_path, "r:*")
    except (tarfile.TarError, OSError) as error:
        raise DataError(f"{archive_path}: not a readable tar archive ({error})") from error


def _extract_then_rename(
    tar: tarfile.TarFile,
    members: list[tarfile.TarInfo],
    tops: list[str],
    dest: Path,
    archive_path: Path,
) -> list[Path]:
    # The temporary folder is inside dest so the final rename stays on one filesystem (atomic).
    staging = Path(tempfile.mkdtemp(prefix=f".{archive_path.name}.", suffix=".partial", dir=dest))
    try:
        if hasattr(tarfile, "data_filter"):  # second line of defence where Python has it
            tar.extractall(staging, members=members, filter="data")
        else:  # pragma: no cover - Python < 3.10.12 / 3.11.4
            tar.extractall(staging, members=members)
        for top in tops:
            os.replace(staging / top, dest / top)
    except (tarfile.TarError, EOFError) as error:  # truncated data, or the filter refused
        raise DataError(f"{archive_path}: cannot extract ({error})") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("extracted %s into %s", archive_path, dest)
    return [dest / top for top in tops]


def check_members(members: list[tarfile.TarInfo], archive_path: str | Path = "archive") -> None:
    """Raise :class:`DataError` for the first member that could write outside the target."""
    links: dict[tuple[str, ...], str] = {}  # symlinks seen so far, to follow chains of them
    for member in members:
        reason = _unsafe_reason(member, links)
        if reason:
            raise DataError(f"{archive_path}: refusing unsafe member {member.name!r}: {reason}")
        if member.issym():
            links[tuple(_parts(member.name))] = member.linkname


def _unsafe_reason(member: tarfile.TarInfo, links: dict[tuple[str, ...], str]) -> str | None:
    name = member.name
    if _is_absolute(name):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "'..' in its path"
    if member.ischr() or member.isblk() or member.isfifo():
        return "device or FIFO file"
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return f"unsupported member type {member.type!r}"
    if _resolve(_parts(name), links) is None:
        return "its path leads outside the target folder"
    if member.issym():
        parent = posixpath.dirname(posixpath.normpath(name))
        target = posixpath.join(parent, member.linkname)
        if _is_absolute(member.linkname) or _resolve(_parts(target), links) is None:
            return f"symlink to {member.linkname!r} points outside the target folder"
    if member.islnk() and (
        _is_absolute(member.linkname) or _resolve(_parts(member.linkname), links) is None
    ):
        return f"hard link to {member.linkname!r} points outside the target folder"
    return None


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or bool(PureWindowsPath(name).drive)


def _parts(name: str) -> list[str]:
    return [part for part in name.replace("\\", "/").split("/") if part not in ("", ".")]


def _resolve(
    parts: list[str], links: dict[tuple[str, ...], str], depth: int = 0
) -> list[str] | None:
    """Where ``parts`` lands, following the archive's own symlinks; None when it escapes.

    Lexical normalisation alone is not enough: after ``d/x -> ..``, a link ``d/y -> x/..``
    looks like it points to ``d`` but really points to the parent of the target folder.
    """
    if depth > _MAX_LINK_DEPTH:
        return None  # a loop of links: treat as unsafe rather than recurse forever
    here: list[str] = []
    for part in parts:
        if part == "..":
            if not here:
                return None
            here.pop()
            continue
        here.append(part)
        target = links.get(tuple(here))
        if target is not None:
            if _is_absolute(target):
                return None
            resolved = _resolve(here[:-1] + _parts(target), links, depth + 1)
            if resolved is None:
                return None
            here = resolved
    return here
