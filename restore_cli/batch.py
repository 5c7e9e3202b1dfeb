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
# Folder walks pick these up too; whether a file is a video is still decided by its content (pipeline probes).
VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v"}


@dataclass(frozen=True)
class Job:
    source: Path
    rel: Path  # path below the output root, with the input's own suffix
    root: Path  # output root
    named: bool = False  # rel is the exact output name (-o out.mkv): no --suffix, no extension change


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def _files(folder: Path, *, recursive: bool, suffixes: set[str]) -> list[Path]:
    if recursive:
        found = [Path(d) / f for d, _, files in os.walk(folder) for f in files]
    else:
        found = [p for p in folder.iterdir() if p.is_file()]
    # Hidden files and our own temporaries are not inputs.
    return sorted(p for p in found if p.suffix.lower() in suffixes and not p.name.startswith("."))


def image_files(folder: Path, *, recursive: bool) -> list[Path]:
    """Image files in a folder (sorted), skipping hidden files and our own temporaries."""
    return _files(folder, recursive=recursive, suffixes=IMAGE_SUFFIXES)


def media_files(folder: Path, *, recursive: bool) -> list[Path]:
    """Image and video files in a folder (sorted), skipping hidden files and our own temporaries."""
    return _files(folder, recursive=recursive, suffixes=IMAGE_SUFFIXES | VIDEO_SUFFIXES)


def collect(inputs: list[str], output: Path | None, *, recursive: bool) -> list[Job]:
    """Expand files, folders and globs into jobs with their output locations.

    `output` is a folder, except that a name with a video extension (out.mkv) that is not an existing folder names
    the output file itself; that needs exactly one input file.
    """
    if output is not None and output.suffix.lower() in VIDEO_SUFFIXES and not output.is_dir():
        return [_named_output(inputs, output)]
    jobs: list[Job] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            root = output if output is not None else path.parent / f"{path.name}_restored"
            jobs += [Job(p, p.relative_to(path), root) for p in media_files(path, recursive=recursive)]
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


def _named_output(inputs: list[str], output: Path) -> Job:
    path = Path(inputs[0]).expanduser() if len(inputs) == 1 else None
    if path is None or not path.is_file():
        raise UsageError(f"-o {output} names a file: give exactly one input file, or make -o a folder")
    return Job(path, Path(output.name), output.parent, named=True)


def output_path(job: Job, *, extension: str, suffix: str) -> Path:
    rel = job.rel if job.named else job.rel.with_name(f"{job.rel.stem}{suffix}{extension}")
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
