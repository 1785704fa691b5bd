"""Crash-safe file operations: a directory appears whole under its final name, or not at all.

The recipe is the classic one: write under a temporary name, fsync every file and the
directory, rename into place (atomic within one filesystem), then fsync the parent so the
rename itself is durable.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's contents and entry to stable storage."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(directory: Path) -> None:
    """fsync every file in ``directory`` (one level, as an adapter directory has), then it."""
    for child in directory.iterdir():
        if child.is_file():
            fsync_path(child)
    fsync_path(directory)


def publish_directory(staged: Path, final: Path) -> None:
    """Move a fully written, fsynced directory to its final name and make that durable."""
    os.rename(staged, final)
    fsync_path(final.parent)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(directory: Path) -> dict[str, str]:
    """sha256 of each file in ``directory``, by file name."""
    return {child.name: file_sha256(child) for child in sorted(directory.iterdir()) if child.is_file()}


def remove_tree(path: Path) -> None:
    """Remove a directory or file if present; a missing one is already what we want."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
