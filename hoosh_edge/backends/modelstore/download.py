"""Bytes from the network into ``models/``: resumable HTTP downloads checked as they stream.

A download lands in ``.partial/NAME.part`` with a sidecar that says which URL and sha256 it
belongs to, so a cut download resumes with ``Range`` (``If-Range`` guards a file that changed);
only bytes whose size and sha256 are right are moved to their final name, durably.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import requests

from hoosh_edge.backends.modelstore.manifest import ChecksumMismatch, ModelStoreError
from hoosh_edge.backends.modelstore.tree import CHUNK

Progress = Callable[[str, int, "int | None"], None]  # (file name, bytes done, bytes total)
# Network reads are smaller: a body cut mid-read loses the bytes of the unfinished read.
NET_CHUNK = 64 << 10


def install_file(tmp: Path, final: Path) -> None:
    """Give verified bytes their final name atomically, durable across a power cut."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    dfd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def check_bytes(digest: str, size: int, name: str, sha: str | None, want_size: int | None) -> None:
    if want_size is not None and size != want_size:
        raise ChecksumMismatch(f"{name}: got {size} bytes, expected {want_size}")
    if sha is not None and digest != sha:
        raise ChecksumMismatch(f"{name}: sha256 {digest}, expected {sha}")


def download(
    url: str,
    part: Path,
    sha: str | None,
    want_size: int | None,
    *,
    progress: Progress | None,
    timeout: float,
) -> str:
    """Stream ``url`` into ``part`` (resuming it with Range if it exists); return its sha256."""
    meta_path = part.with_name(part.name + ".json")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = {}
    if part.exists() and (meta.get("url") != url or meta.get("sha256") != sha):
        part.unlink()  # bytes of another download: not ours to resume
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    if have and meta.get("validator"):
        headers["If-Range"] = meta["validator"]  # the server sends it all again if the file changed
    h = hashlib.sha256()
    with requests.get(url, headers=headers, stream=True, timeout=(timeout, timeout)) as r:
        start = _range_start(r.headers.get("Content-Range")) if r.status_code == 206 else 0
        if r.status_code == 416 and have:
            start, mode = have, None  # the partial already holds the whole file
        elif r.status_code == 206 and have and start == have:
            mode = "ab"
        elif r.status_code == 200:
            start, mode = 0, "wb"
        else:
            if r.status_code == 206:  # a range we did not ask for: start afresh next time
                part.unlink(missing_ok=True)
            raise ModelStoreError(f"HTTP {r.status_code} for {url}")
        length = r.headers.get("Content-Length")
        total = start + int(length) if mode and length and length.isdigit() else None
        if want_size is not None and total is not None and total != want_size:
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(f"{url} offers {total} bytes, expected {want_size}")
        validator = r.headers.get("ETag") or r.headers.get("Last-Modified")
        meta_path.write_text(json.dumps({"url": url, "sha256": sha, "validator": validator}))
        if start:
            with open(part, "rb") as fh:
                while block := fh.read(CHUNK):
                    h.update(block)
        done = start
        if mode:
            try:
                with open(part, mode) as out:
                    for chunk in r.iter_content(NET_CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                        if want_size is not None and done > want_size:
                            raise ChecksumMismatch(f"{url} sent more than {want_size} bytes")
                        if progress:
                            progress(part.name.removesuffix(".part"), done, total or want_size)
            except requests.RequestException as e:
                raise ModelStoreError(
                    f"download of {url} cut at {done} bytes ({type(e).__name__}); "
                    "pull again to resume"
                ) from e
    try:
        check_bytes(h.hexdigest(), done, url, sha, want_size)
    except ChecksumMismatch:
        part.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
        raise
    meta_path.unlink(missing_ok=True)
    return h.hexdigest()


def _range_start(content_range: str | None) -> int:
    """The first byte of a ``Content-Range: bytes A-B/N`` answer (-1 if unreadable)."""
    try:
        return int(content_range.split()[1].split("-")[0])  # type: ignore[union-attr]
    except (AttributeError, IndexError, ValueError):
        return -1
