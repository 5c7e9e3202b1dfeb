"""Per-file rows, run totals, and the JSON report."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .terminal import make_console, styled


@dataclass
class FileRecord:
    input: str
    output: str | None
    status: str  # "ok" | "partial" (a damaged video: what decoded is written) | "failed" | "skipped"
    error: str | None = None
    size_in: tuple[int, int] | None = None  # (width, height)
    size_out: tuple[int, int] | None = None
    decode_ms: float = 0.0
    infer_ms: float = 0.0
    encode_ms: float = 0.0
    tile: int | None = None
    tiles: int | None = None
    notes: list[str] = field(default_factory=list)
    compare: str | None = None  # side-by-side picture, with --compare
    model_info: list[dict[str, Any]] = field(default_factory=list)  # per forward, from models that report
    frames: int | None = None  # videos only: frames restored
    fps: float | None = None  # videos only: the source's average frame rate (kept in the output)
    codec: str | None = None  # videos only: the output's video encoder
    streams: list[dict[str, Any]] | None = None  # videos only: what became of each other stream

    @property
    def megapixels(self) -> float:
        if not self.size_in:
            return 0.0
        return self.size_in[0] * self.size_in[1] * (self.frames or 1) / 1e6

    @property
    def megapixels_per_s(self) -> float:
        if self.infer_ms <= 0:
            return 0.0
        return self.megapixels / (self.infer_ms / 1000)

    def stage_fps(self) -> dict[str, float]:
        """Frames per second of decoding, inference and encoding (videos)."""
        n = self.frames or 0
        return {f"{k}_fps": round(n / (ms / 1000), 3) if ms > 0 else 0.0
                for k, ms in (("decode", self.decode_ms), ("infer", self.infer_ms), ("encode", self.encode_ms))}


def _info_text(infos: list[dict[str, Any]]) -> str:
    """What the model reported (AdaRevID's exit, MoCE-IR's experts, ...), compact: distinct values per key."""
    if not infos:
        return ""
    parts = []
    for key in infos[0]:
        values = []
        for info in infos:
            v = info.get(key)
            text = f"{v:.3g}" if isinstance(v, float) else str(v)
            if text not in values:
                values.append(text)
        shown = ", ".join(values[:4]) + (", ..." if len(values) > 4 else "")
        parts.append(f"{key} {shown}")
    return "; ".join(parts)[:160]


class Reporter:
    """Prints one row per file as it finishes, and totals at the end."""

    def __init__(self, *, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or make_console(stderr=True)
        self.records: list[FileRecord] = []
        self.started = time.perf_counter()

    def add(self, rec: FileRecord) -> None:
        self.records.append(rec)
        if self.quiet and rec.status != "failed":
            return
        # File names and errors are printed as they are (Text pieces): a '[' in a name is not markup.
        if rec.status == "failed":
            self.console.print(styled(("failed", "red"), f" {rec.input}: {rec.error}"), soft_wrap=True)
        elif rec.status == "skipped":
            self.console.print(styled((f"skipped {rec.input} ({rec.error})", "dim")), soft_wrap=True)
        else:
            if rec.status == "partial":
                self.console.print(styled(("partial", "red"), f" {rec.input}: {rec.error}"), soft_wrap=True)
            (w, h), (ow, oh) = rec.size_in or (0, 0), rec.size_out or (0, 0)
            if rec.frames is not None:
                fps = rec.stage_fps()
                stages = (f"{rec.frames} frames  decode {fps['decode_fps']:.1f} fps  infer {fps['infer_fps']:.1f} fps"
                          f"  encode {fps['encode_fps']:.1f} fps")
            else:
                stages = (f"decode {rec.decode_ms:.0f} ms  infer {rec.infer_ms:.0f} ms"
                          f"  encode {rec.encode_ms:.0f} ms")
            self.console.print(self._row(rec, f"{w}x{h} -> {ow}x{oh}  {stages}"), soft_wrap=True)

    @staticmethod
    def _row(rec: FileRecord, middle: str) -> Text:
        """One file's line: input, `middle` (sizes and stage timings), speed, tiling, notes, model info."""
        line = styled(f"{rec.input}  {middle}  {rec.megapixels_per_s:.2f} MP/s"
                      + (f"  tile {rec.tile}x{rec.tiles}" if rec.tile else ""),
                      *((f"  {n}", "yellow") for n in rec.notes))
        info = _info_text(rec.model_info)
        if info:
            line.append(f"  {info}", "cyan")
        return line

    def totals(self) -> dict[str, Any]:
        ok = [r for r in self.records if r.status == "ok"]
        done = [r for r in self.records if r.status in ("ok", "partial")]
        mp = sum(r.megapixels for r in done)
        infer = sum(r.infer_ms for r in done) / 1000
        return {
            "files": len(self.records), "ok": len(ok),
            "partial": sum(r.status == "partial" for r in self.records),
            "failed": sum(r.status == "failed" for r in self.records),
            "skipped": sum(r.status == "skipped" for r in self.records),
            "megapixels": round(mp, 4), "infer_s": round(infer, 4),
            "wall_s": round(time.perf_counter() - self.started, 4),
            "megapixels_per_s": round(mp / infer, 4) if infer > 0 else 0.0,
        }

    def summary(self, *, interrupted: bool = False) -> None:
        t = self.totals()
        failed = [r for r in self.records if r.status in ("failed", "partial")]
        if failed:
            table = Table(title=f"{len(failed)} file(s) failed or partly restored", title_justify="left",
                          show_edge=False)
            table.add_column("file", overflow="fold")
            table.add_column("reason", overflow="fold")
            for r in failed:
                table.add_row(Text(r.input), Text(r.error or ""))
            self.console.print(table)
        head = "interrupted: " if interrupted else ""
        partial = f", {t['partial']} partly (damaged input)" if t["partial"] else ""
        self.console.print(
            f"{head}{t['ok']} restored{partial}, {t['failed']} failed, {t['skipped']} skipped; "
            f"{t['megapixels']:.2f} MP in "
            f"{t['infer_s']:.2f} s inference ({t['megapixels_per_s']:.2f} MP/s), {t['wall_s']:.2f} s wall",
            soft_wrap=True)

    def write_json(self, path: Path, run: dict[str, Any]) -> None:
        doc = {"run": run, "totals": self.totals(), "files": [
            {**asdict(r), "megapixels_per_s": round(r.megapixels_per_s, 4),
             **(r.stage_fps() if r.frames is not None else {})} for r in self.records]}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, path)
