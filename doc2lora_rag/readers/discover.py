"""Which files an ingest reads: the files named, and the supported files under folders named."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from doc2lora_rag.readers.base import MissingPathError


@dataclass
class Discovery:
    """Files to read (absolute, sorted, no duplicates) and how many were passed over.

    ``roots`` are the absolute paths as given: documents stored from under them are this
    ingest's to keep in sync (``--prune``).
    """

    files: list[Path] = field(default_factory=list)
    roots: list[Path] = field(default_factory=list)
    ignored: int = 0


def discover(paths: Sequence[str | os.PathLike], suffixes: Iterable[str], globs: Sequence[str] = ()) -> Discovery:
    """Expand ``paths``. Files named explicitly are always taken (an unsupported type then fails
    loudly later); inside folders, hidden entries are skipped and a file is taken when its
    suffix is supported and it matches one of ``globs`` (all files when none are given).

    Every missing path is reported at once, before anything is read.
    """
    suffixes = {s.lower() for s in suffixes}
    absolute = [Path(os.path.abspath(os.path.expanduser(p))) for p in paths]
    missing = [str(p) for p, a in zip(paths, absolute, strict=True) if not a.exists()]
    if missing:
        raise MissingPathError(f"no such file or directory: {', '.join(missing)}")
    found: dict[str, Path] = {}
    result = Discovery(roots=absolute)
    for root in absolute:
        if not root.is_dir():
            found[str(root)] = root
            continue
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                path = Path(folder) / name
                relative = path.relative_to(root).as_posix()
                if name.startswith(".") or path.suffix.lower() not in suffixes or not _matches(relative, globs):
                    result.ignored += 1
                    continue
                if not path.is_file():  # a named pipe or socket in the folder would block the read forever
                    result.ignored += 1
                    continue
                found[str(path)] = path
    result.files = [found[key] for key in sorted(found)]
    return result


def _matches(relative: str, globs: Sequence[str]) -> bool:
    """A pattern with a slash matches the path below the folder, one without the file name."""
    if not globs:
        return True
    name = relative.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(relative if "/" in g else name, g) for g in globs)
