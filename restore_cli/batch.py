"""Input walking and the output tree: which files to restore, and where each result goes.

Outputs mirror the input tree below the output root, never escape it, and never overwrite an input.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".webp", ".bmp", ".gif"}


@dataclass(frozen=True)
class Job:
    source: Path
    rel: Path  # path below the output root, with the input's own suffix
    root: Path  # output root


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def image_files(folder: Path, *, recursive: bool) -> list[Path]:
    """Image files in a folder (sorted), skipping hidden files and our own temporaries."""
    if recursive:
        found = [Path(d) / f for d, _, files in os.walk(folder) for f in files]
    else:
        found = [p for p in folder.iterdir() if p.is_file()]
    # Hidden files and our own temporaries are not inputs.
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def collect(inputs: list[str], output: Path | None, *, recursive: bool) -> list[Job]:
    """Expand files, folders and globs into jobs with their output locations."""
    jobs: list[Job] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            root = output if output is not None else path.parent / f"{path.name}_restored"
            jobs += [Job(p, p.relative_to(path), root) for p in image_files(path, recursive=recursive)]
        elif path.is_file():
            root = output if output is not None else path.parent
            rel = Path(path.name) if output is not None else Path(f"{path.stem}_restored{path.suffix}")
            jobs.append(Job(path, rel, root))
        elif _has_magic(raw):
            matches = sorted(Path(m) for m in glob.glob(raw, recursive=recursive) if Path(m).is_file())
            if not matches:
                raise UsageError(f"{raw}: no files match")
            base = Path(os.path.commonpath([str(m.parent) for m in matches]))
            root = output if output is not None else base.parent / f"{base.name}_restored"
            jobs += [Job(m, m.relative_to(base), root) for m in matches]
        else:
            raise UsageError(f"{raw}: no such file or folder")
    return jobs


def output_path(job: Job, *, extension: str, suffix: str) -> Path:
    rel = job.rel.with_name(f"{job.rel.stem}{suffix}{extension}")
    dest = (job.root / rel).resolve()
    root = job.root.resolve()
    if root != dest and root not in dest.parents:
        raise UsageError(f"{job.source}: output {dest} would escape {root}")
    return dest


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False
