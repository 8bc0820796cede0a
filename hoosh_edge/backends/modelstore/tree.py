"""Directory models (``tree = true``): one sha256 over a folder, extraction and atomic install.

A tree's sha256 is that of its canonical listing: one ``<sha256 of the file>  <relative path>``
line per regular file, sorted by path (byte order), as ``sha256sum`` prints them. The shell gives
the same digest::

    (cd DIR && find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum) | sha256sum

A tree is built in ``.partial/`` and renamed into place whole, so ``models/`` never holds half of
one: a reader sees the old tree or the new one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from hoosh_edge.backends.modelstore.manifest import ChecksumMismatch, ModelStoreError

CHUNK = 1 << 20  # file reads and hashing go in 1 MiB blocks


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class TreeStat:
    """What ``InstallState.fresh`` compares for a tree: total size and newest mtime, no reading."""

    st_size: int
    st_mtime_ns: int
    files: int


def _files(root: Path, follow_links: bool = False) -> list[tuple[str, Path]]:
    """Every regular file under ``root`` as (relative POSIX path, path), sorted by path bytes.

    ``follow_links``: read a linked file as the file it points to (a Hugging Face cache folder
    is all links), for describing a folder the store did not install.
    """
    out, seen = [], set()
    for dirpath, dirs, names in os.walk(root, followlinks=follow_links):
        if follow_links:  # a link back up the tree must not walk it forever
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen:
                dirs[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
        for name in names:
            p = Path(dirpath, name)
            # A tree we install holds no links; one found was put there by hand.
            if p.is_symlink() and not follow_links:
                raise ModelStoreError(f"{p} is a symbolic link; a model tree holds only files")
            out.append((p.relative_to(root).as_posix(), p))
    return sorted(out, key=lambda x: x[0].encode("utf-8", "surrogateescape"))


def tree_sha256(root: Path, follow_links: bool = False) -> str:
    """The sha256 of the tree's canonical listing (see the module docstring)."""
    listing = "".join(f"{sha256_file(p)}  {rel}\n" for rel, p in _files(root, follow_links))
    return hashlib.sha256(listing.encode("utf-8", "surrogateescape")).hexdigest()


def tree_stat(root: Path, follow_links: bool = False) -> TreeStat:
    """The tree's total size, newest mtime and file count (stat calls only)."""
    size = newest = count = 0
    for _rel, p in _files(root, follow_links):
        st = p.stat()
        size, newest, count = size + st.st_size, max(newest, st.st_mtime_ns), count + 1
    return TreeStat(size, newest, count)


def extract_tree(zf: zipfile.ZipFile, prefix: str, dest: Path, max_bytes: int | None) -> int:
    """Copy the archive's files under ``prefix`` into ``dest``; return the bytes written.

    Refuses members that would land outside ``dest`` and stops past ``max_bytes`` (an archive
    that inflates beyond the tree's known size is not the one pinned).
    """
    written = 0
    members = [i for i in zf.infolist() if i.filename.startswith(prefix) and not i.is_dir()]
    if not members:
        raise ModelStoreError(f"the archive holds nothing under {prefix}")
    for info in members:
        rel = info.filename[len(prefix) :]
        parts = Path(rel).parts
        if not rel or rel.startswith("/") or ".." in parts or "\\" in rel:
            raise ModelStoreError(f"refusing archive member {info.filename}")
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(out, "wb") as dst:
            while block := src.read(CHUNK):
                written += len(block)
                if max_bytes is not None and written > max_bytes:
                    raise ChecksumMismatch(f"{prefix} holds more than {max_bytes} bytes")
                dst.write(block)
    return written


def check_tree(root: Path, name: str, sha: str | None, size: int | None) -> str:
    """The tree's sha256, or ChecksumMismatch when its size or sha256 is not the pinned one."""
    got = tree_stat(root).st_size
    if size is not None and got != size:
        raise ChecksumMismatch(f"{name}: the tree holds {got} bytes, expected {size}")
    digest = tree_sha256(root)
    if sha is not None and digest != sha:
        raise ChecksumMismatch(f"{name}: tree sha256 {digest}, expected {sha}")
    return digest


def scratch_tree(scratch: Path, name: str) -> Path:
    """A fresh empty folder in ``scratch`` (models/.partial) to build tree ``name`` in."""
    tmp = Path(tempfile.mkdtemp(dir=scratch, prefix=f"{name}.tree-"))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the data from a gateway run as another user
    return tmp


def install_tree(tmp: Path, final: Path) -> None:
    """Put the built tree ``tmp`` at ``final`` by renames only; an old tree there is replaced."""
    for _rel, p in _files(tmp):
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    old = None
    if final.exists() or final.is_symlink():
        old = tmp.with_name(tmp.name + ".old")
        os.replace(final, old)  # a directory cannot be renamed over a non-empty one
    try:
        os.replace(tmp, final)
    except OSError:
        if old is not None:
            os.replace(old, final)  # put the old tree back rather than leave none
        raise
    dfd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    if old is not None:
        remove_tree(old)


def remove_tree(path: Path) -> bool:
    """Delete a tree (or a link standing in for one); True if something was removed."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return True
    if path.is_dir():
        shutil.rmtree(path)
        return True
    return False
