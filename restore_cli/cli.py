"""The `restore` command line: one command per task, plus `models`. Parses, calls the API, prints."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from . import batch, pipeline, presets
from .errors import RestoreError, UsageError
from .report import Reporter
from .terminal import make_console, styled

if TYPE_CHECKING:
    from .api import LoadedModel

# Help texts are plain text (rich_markup_mode=None): "hf://owner/repo[/file][@rev]" and "[default: ...]" are
# literal brackets, not rich tags; with markup on, help would drop or crash on them. Usage errors then print as
# click prints them.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Batch image restoration: deblur, denoise, upscale, with seamless tiling.")
models_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                         help="List, inspect, download and remove model presets.")
app.add_typer(models_app, name="models")
err = make_console(stderr=True)
out = make_console()

FORMATS = ("png", "jpg", "jpeg", "webp", "tif", "tiff", "bmp")

Inputs = Annotated[list[str], typer.Argument(help="Image or video files, folders or globs.", show_default=False,
                                             metavar="INPUTS")]
Output = Annotated[Path | None, typer.Option("-o", "--output", help=(
    "Output folder [default: <input>_restored], or for one video input the output file (out.mkv)."))]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help=(
    "Preset name, family name (nafnet, ufpnet, span, ...: its best weights that can be had), weights file, or "
    "hf://owner/repo[/file][@rev]."))]
TileOpt = Annotated[str, typer.Option(help="Tile size: auto, 0 (whole image) or a size in pixels.")]
OverlapOpt = Annotated[int, typer.Option(min=0, help="Overlap between tiles, in pixels.")]
BATCH_HELP = "Pictures per forward pass: video frames or same-size images when whole ones fit, else tiles."
PrecisionOpt = Annotated[str, typer.Option(help="auto, fp32, fp16 or bf16.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
FormatOpt = Annotated[str | None, typer.Option("--format", help="png, jpg, webp, tif or bmp [default: as input].")]
SuffixOpt = Annotated[str, typer.Option(help="Appended to each output file name's stem.")]
RecursiveOpt = Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders.")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write a JSON report here.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q",
                     help="Print failures, the summary and family fallbacks only.")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Use cached weights only (like HF_HUB_OFFLINE=1).")]
QualityOpt = Annotated[int, typer.Option(min=1, max=100, help="JPEG/WebP quality.")]
SkipOpt = Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose output already exists.")]
StripOpt = Annotated[bool, typer.Option("--strip-metadata", help="Do not copy ICC profile and EXIF.")]
MaxPxOpt = Annotated[int | None, typer.Option("--max-pixels", help="Refuse larger images (0: no limit).")]
ScaleOpt = Annotated[int | None, typer.Option("--scale", min=1, help="Output scale, for multi-scale models (SpanC).")]
RatioOpt = Annotated[float | None, typer.Option("--ratio", min=0.0, max=1.0,
                    help="Share of windows that get attention, for content-aware models (CAMixerSR).")]
ExitOpt = Annotated[float | None, typer.Option("--exit-threshold", min=0.0,
                   help="Early-exit confidence threshold (AdaRevID): lower exits earlier.")]
CompareOpt = Annotated[bool, typer.Option("--compare", help="Also write a before/after picture next to each output.")]
CodecOpt = Annotated[str | None, typer.Option("--codec", help=(
    "Video encoder (libx264, libx265, libvpx-vp9, libsvtav1, ffv1, ...) [default: the input's codec family]."))]
CrfOpt = Annotated[int | None, typer.Option("--crf", min=0, max=63,
                                            help="Video quality (lower is better) [default: 18].")]
VPresetOpt = Annotated[str | None, typer.Option("--preset", help="Video encoder speed preset (x264/x265/SVT-AV1).")]
PixFmtOpt = Annotated[str | None, typer.Option("--pix-fmt", help="Video pixel format [default: as input].")]
FramesOpt = Annotated[str | None, typer.Option("--frames", help=(
    "Video range A:B, from A up to B (either side optional): frame numbers (10:250) or times from the first frame "
    "(1.5s:4s, 1m:1m30s, 1h2m3.5s:)."))]


class _GracefulStop:
    """First Ctrl-C: finish the tile in flight, clean up, summarise. Second Ctrl-C: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        err.print(styled(("stopping after the picture in flight (Ctrl-C again to stop now)", "yellow")))

    def __enter__(self) -> _GracefulStop:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (e.g. embedded): keep the default behaviour
            self._previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _run_task(task: str, inputs: list[str], *, output: Path | None, model: str | None, tile: str, overlap: int,
              batch_size: int, precision: str, device: str, fmt: str | None, suffix: str, recursive: bool,
              json_path: Path | None, quiet: bool, offline: bool, quality: int, skip_existing: bool,
              strip_metadata: bool, max_pixels: int | None, compare: bool = False,
              options: dict[str, Any] | None = None, video: pipeline.VideoOptions | None = None) -> int:
    from . import api  # torch: only once there is work to do
    from .io import images

    if fmt is not None and fmt.lower() not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}")
    jobs = batch.collect(inputs, output, recursive=recursive)
    if not jobs:
        raise UsageError("no images or videos found in the inputs")
    t0 = time.perf_counter()
    loaded = api.load_model(model, task=task, device=device, precision=precision, tile=tile, overlap=overlap,
                            batch=batch_size, offline=offline)
    api.set_options(loaded, **(options or {}))
    _say_choice(loaded, quiet=quiet)
    if not quiet:
        err.print(styled((loaded.name, "bold"), f" ({loaded.spec.id}, x{loaded.spec.scale}, "
                         f"{loaded.params / 1e6:.2f} M params, licence {loaded.license}) on {loaded.device} "
                         f"{str(loaded.dtype).removeprefix('torch.')}, loaded in {time.perf_counter() - t0:.2f} s"),
                  soft_wrap=True)
    limit = images.DEFAULT_MAX_PIXELS if max_pixels is None else (max_pixels or None)
    inputs_resolved = {j.source.resolve() for j in jobs}
    # counted in pictures: one per image, a video's frames once it is opened
    progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                        TextColumn("frames"), _RateColumn(), TimeRemainingColumn(), console=err, transient=True,
                        disable=quiet)
    reporter = Reporter(quiet=quiet, console=progress.console)
    with progress, _GracefulStop() as stop:
        settings = pipeline.Settings(fmt=fmt, suffix=suffix, quality=quality, skip_existing=skip_existing,
                                     strip=strip_metadata, max_pixels=limit, inputs=inputs_resolved,
                                     compare=compare, video=video or pipeline.VideoOptions(),
                                     should_stop=lambda: stop.requested)
        bar = progress.add_task("restoring", total=len(jobs))
        hooks = pipeline.Hooks(record=reporter.add, done=lambda n: progress.advance(bar, n),
                               expect=lambda n: progress.update(bar, total=progress.tasks[0].total + n))
        try:
            result = pipeline.run(jobs, loaded, settings, hooks)
        except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, outputs in progress removed
            result = pipeline.RunResult(reporter.records, interrupted=True)
    reporter.summary(interrupted=result.interrupted)
    if json_path is not None:
        reporter.write_json(json_path, {
            "task": task, "model": loaded.name, "arch": loaded.spec.id, "weights": str(loaded.weights),
            "device": str(loaded.device), "precision": str(loaded.dtype).removeprefix("torch."),
            "tile": tile, "overlap": overlap, "batch": batch_size})
    if result.interrupted:
        return 130
    return 1 if any(r.status in ("failed", "partial") for r in reporter.records) else 0


class _RateColumn(ProgressColumn):
    """Pictures per second, over the last half minute."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} fps" if speed else "- fps")


def _say_choice(loaded: LoadedModel, *, quiet: bool) -> None:
    """The one line saying which preset a family name resolved to. Quiet runs still get it when it is a fallback:
    the weights used are not the best ones the name stands for, which changes what the outputs look like."""
    choice = loaded.choice
    if choice is not None and (not quiet or choice.fallback):
        err.print(styled((choice.note, "yellow" if choice.fallback else "")), soft_wrap=True)


def _task_command(task: str, help_text: str) -> Any:
    def command(inputs: Inputs, output: Output = None, model: ModelOpt = None, tile: TileOpt = "auto",
                overlap: OverlapOpt = 16, batch_size: Annotated[int, typer.Option("--batch", min=1,
                help=BATCH_HELP)] = 1, precision: PrecisionOpt = "auto", device: DeviceOpt = "auto",
                fmt: FormatOpt = None, suffix: SuffixOpt = "", recursive: RecursiveOpt = False,
                json_path: JsonOpt = None, quiet: QuietOpt = False, offline: OfflineOpt = False,
                quality: QualityOpt = 95, skip_existing: SkipOpt = False, strip_metadata: StripOpt = False,
                max_pixels: MaxPxOpt = None, compare: CompareOpt = False, scale: ScaleOpt = None,
                ratio: RatioOpt = None, exit_threshold: ExitOpt = None, codec: CodecOpt = None, crf: CrfOpt = None,
                preset: VPresetOpt = None, pix_fmt: PixFmtOpt = None, frames: FramesOpt = None) -> None:
        rng = pipeline.parse_frames(frames)  # before the model loads: a typo fails fast
        video = pipeline.VideoOptions(codec=codec, crf=crf, preset=preset, pix_fmt=pix_fmt, frames=rng)
        code = _run_task(task, inputs, output=output, model=model, tile=tile, overlap=overlap,
                         batch_size=batch_size, precision=precision, device=device, fmt=fmt, suffix=suffix,
                         recursive=recursive, json_path=json_path, quiet=quiet, offline=offline, quality=quality,
                         skip_existing=skip_existing, strip_metadata=strip_metadata, max_pixels=max_pixels,
                         compare=compare, options={"scale": scale, "ratio": ratio, "exit_threshold": exit_threshold},
                         video=video)
        raise typer.Exit(code)

    command.__doc__ = help_text
    return command


app.command("deblur")(_task_command("deblur", "Remove motion and defocus blur."))
app.command("denoise")(_task_command("denoise", "Remove sensor noise and compression artefacts."))
app.command("upscale")(_task_command("upscale", "Super-resolve images (x2 / x4)."))
app.command("sr", hidden=True)(_task_command("upscale", "Alias of upscale."))
app.command("restore")(_task_command("restore", "All-in-one restoration (noise, rain, haze, blur)."))
app.command("face")(_task_command("face", "Restore faces."))


# -- doctor -----------------------------------------------------------------------------------------------------
@app.command("doctor")
def doctor(build: Annotated[bool, typer.Option("--build", help="Compile every CUDA kernel now.")] = False,
           verbose: Annotated[bool, typer.Option("--verbose", help="Show compiler output.")] = False) -> None:
    """Versions, GPU, and which custom ops are compiled (for which architecture) or fall back to PyTorch."""
    import platform

    import torch

    from archs import ops

    out.print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.print(f"cuda:{i} {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    else:
        out.print("no CUDA GPU: every op runs its PyTorch reference")
    table = Table(show_edge=False, pad_edge=False)
    for col in ("op", "backend", "arch", "detail"):
        table.add_column(col, overflow="fold")
    for st in (ops.build_all(verbose=verbose) if build else ops.status()):
        table.add_row(st.name, st.backend, st.arch or "-", st.detail)
    out.print(table)
    from archs.ops.selective_scan import mamba_ssm_kernel

    mamba = mamba_ssm_kernel()
    out.print("mamba-ssm selective_scan_cuda: " + (f"importable ({mamba.__file__}); selective_scan backend "
                                                   "'mamba_ssm' available" if mamba else "not installed"))
    _doctor_video()


def _doctor_video() -> None:
    """Which video encoders this PyAV has (hardware ones only if they open here)."""
    try:
        import av

        from .io import video
    except ImportError:
        out.print("video: PyAV not installed (pip install 'restore-cli[video]'): images only")
        return
    found = video.encoders()
    usable = [name for name, state in found.items() if state == "yes"]
    out.print(f"video: PyAV {av.__version__}; encoders usable: {', '.join(usable) or 'none'}", soft_wrap=True)
    for name, state in found.items():
        if state != "yes":
            out.print(f"  {name}: {state}", soft_wrap=True)


# -- eval -------------------------------------------------------------------------------------------------------
def _list_degradations(value: bool) -> None:
    # Eager: runs while parsing, before click asks for FOLDER, so `restore eval --list` needs nothing else.
    if not value:
        return
    from .training import degrade

    for name, d in degrade.DEGRADATIONS.items():
        out.print(f"{name:18} {d.task:8} x{d.scale}  {d.description}", soft_wrap=True)
    raise typer.Exit(0)


@app.command("eval")
def eval_command(
    folder: Annotated[Path, typer.Argument(help="Clean images (synthetic mode) or degraded inputs (with --targets).",
                                           metavar="FOLDER")],
    model: ModelOpt = None,
    task: Annotated[str | None, typer.Option(help="Use this task's default model when --model is not given.")] = None,
    degradation: Annotated[str | None, typer.Option(help="Named, seeded degradation (see restore eval --list).")]
    = None,
    targets: Annotated[Path | None, typer.Option(help="Folder of clean targets matching the inputs by name.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the degradation (combined with each file name).")] = 0,
    limit: Annotated[int | None, typer.Option(help="Only the first N images.")] = None,
    crop: Annotated[int | None, typer.Option(help="Centre-crop clean images to N x N first.")] = None,
    json_path: JsonOpt = None, tile: TileOpt = "auto", precision: PrecisionOpt = "auto", device: DeviceOpt = "auto",
    offline: OfflineOpt = False,
    list_degradations: Annotated[bool, typer.Option("--list", is_eager=True, callback=_list_degradations,
                                                    help="List the named degradations and exit.")] = False,
) -> None:
    """PSNR / SSIM of a model against its degraded input (bicubic for SR): RGB for restoration, Y for SR."""
    from . import api, evaluate, resolve
    from .complexity import macs_per_megapixel
    from .training import degrade

    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder")
    if targets is None and degradation is None:
        raise UsageError("name a --degradation (see --list) or give --targets")
    if degradation is not None and degradation not in degrade.DEGRADATIONS:
        raise UsageError(f"unknown degradation {degradation!r}; known: {', '.join(degrade.DEGRADATIONS)}")
    if task is None and degradation is not None:
        task = degrade.DEGRADATIONS[degradation].task
    # The task picks the default model, or a family's preset; a preset or file is scored on whatever it is given.
    by_task = model is None or resolve.family_named(model) is not None
    loaded = api.load_model(model, task=task if by_task else None, device=device, precision=precision,
                            tile=tile, offline=offline)
    _say_choice(loaded, quiet=False)

    def restore_fn(img: Any) -> Any:
        return pipeline.restore_array(loaded, img)[0]

    table = Table(show_edge=False, pad_edge=False)
    for col in ("image", "input PSNR", "output PSNR", "gain", "input SSIM", "output SSIM"):
        table.add_column(col, justify="right" if col != "image" else "left")
    if targets is not None:
        res = evaluate.evaluate_pairs(restore_fn, folder, targets, scale=loaded.spec.scale, json_path=None)
    else:
        res = evaluate.evaluate(restore_fn, folder, degradation, seed=seed, limit=limit, crop=crop)
        if res.scale != loaded.spec.scale:
            raise UsageError(f"{degradation} is x{res.scale}, the model x{loaded.spec.scale}")
    for r in res.images:
        (pi, si), (po, so) = r.input.primary(res.space), r.output.primary(res.space)
        table.add_row(r.name, f"{pi:.2f}", f"{po:.2f}", f"{po - pi:+.2f}", f"{si:.4f}", f"{so:.4f}")
    out.print(table)
    macs = macs_per_megapixel(loaded.module, in_channels=loaded.spec.in_channels,
                              side=max(64, 4 * loaded.spec.multiple_of))
    out.print(f"{loaded.name}: {res.summary()} [{'Y channel' if res.space == 'y' else 'RGB'}, "
              f"border {res.crop_border}]; {loaded.params / 1e6:.2f} M params, {macs / 1e9:.1f} GMACs/MP",
              soft_wrap=True)
    if json_path is not None:
        doc = res.to_dict()
        doc["model"] = {"name": loaded.name, "arch": loaded.spec.id, "params": loaded.params,
                        "macs_per_megapixel": macs, "weights": str(loaded.weights)}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=2) + "\n")


# -- models -----------------------------------------------------------------------------------------------------
def _params(p: presets.Preset) -> int | None:
    import torch

    import archs

    try:
        with torch.device("meta"):
            m = archs.build(p.arch, **p.kwargs)
        return sum(t.numel() for t in m.parameters())
    except Exception:  # an arch not implemented yet still lists
        return None


def _source_text(p: presets.Preset) -> str:
    s = p.source
    if s.kind == "hf":
        return f"hf://{s.repo}/{s.filename}@{(s.revision or '')[:10]}"
    if s.kind == "bundled":
        return f"bundled {s.filename}"
    return s.url or "url"


@models_app.callback(invoke_without_command=True)
def models_main(ctx: typer.Context) -> None:
    """Without a sub-command: list the presets."""
    if ctx.invoked_subcommand is None:
        models_list(task=None, arch=None)


@models_app.command("list")
def models_list(task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
                arch: Annotated[str | None, typer.Option(help="Only this architecture or family.")] = None) -> None:
    """List presets: name, task (and scale), family (also a --model value), weights licence, where the weights
    are (bundled, cached, downloadable, manual download, offline)."""
    from . import resolve

    cat = presets.catalog()
    # Narrow columns, one space apart, so a row fits 80 terminal columns; `models info` has the long licence,
    # the source and the parameter count.
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 1, 0, 0))
    for col in ("name", "task", "family", "licence", "weights"):
        table.add_column(col, overflow="fold")
    default_names = set(cat.defaults.values())
    wanted = _same_arch(arch) if arch else None
    for p in cat.presets.values():
        family = resolve.family_label(p, cat)
        if (task and not p.serves(task)) or (wanted and not wanted(p, family)):
            continue
        table.add_row(p.name + (" *" if p.name in default_names else ""),
                      p.task + (f" x{p.scale}" if p.scale != 1 else ""), family, p.short_license, resolve.status(p))
    out.print(table)
    out.print("* default for its task. --model takes a preset name or a family name (its best weights that can be "
              "had); `restore models info NAME` for details.")


def _same_arch(arch: str) -> Callable[[presets.Preset, str], bool]:
    """Filter for --arch: a preset matches by its arch name, its family, or the registry entry they name."""
    import archs

    def entry_id(name: str) -> str | None:
        try:
            return archs.entry(name).id
        except KeyError:
            return None

    want = arch.lower()
    want_id = entry_id(arch)
    return lambda p, family: want in (p.arch.lower(), family) or (want_id is not None and want_id == entry_id(p.arch))


def _print_rows(rows: list[tuple[str, str]]) -> None:
    for k, v in rows:
        out.print(styled((f"{k:12}", "bold"), f" {v}"), soft_wrap=True)


@models_app.command("info")
def models_info(name: Annotated[str, typer.Argument(help="A preset name, or a family name (e.g. ufpnet, SPAN).",
                                                    metavar="NAME")]) -> None:
    """Everything about one preset, or the presets a family name would use and which one it uses now."""
    from . import resolve

    cat = presets.catalog()
    family = None if name in cat.presets else resolve.find_family(name, cat)
    if family is not None:
        _family_info(family, cat)
        return
    p = presets.get(name)
    n = _params(p)
    rows = [("name", p.name), ("task", ", ".join((p.task, *p.tasks))), ("arch", p.arch),
            ("family", resolve.family_label(p, cat)), ("kwargs", str(p.kwargs)), ("scale", f"x{p.scale}"),
            ("params", f"{n:,}" if n else "?"), ("licence", p.license), ("description", p.description),
            ("source", p.source.kind)]
    s = p.source
    rows += [(k, v) for k, v in (("repo", s.repo), ("file", s.filename), ("revision", s.revision),
                                 ("sha256", s.sha256), ("url", s.url), ("note", s.note)) if v]
    if s.kind == "url" and not s.sha256:
        from . import urls

        seen = urls.recorded(s)
        rows.append(("sha256", f"{seen['sha256']} (unpinned: recorded on first download, {seen.get('date')})"
                     if seen else "unpinned (recorded on first download)"))
    rows.append(("available", resolve.status(p)))
    _print_rows(rows)


def _family_info(family: presets.Family, cat: presets.Catalog) -> None:
    from . import resolve

    spellings = [n for n in resolve.arch_names(family, cat) if n.lower() != family.name]
    _print_rows([("family", family.name), ("tasks", ", ".join(family.tasks)),
                 ("also named", ", ".join(spellings) or "-")])
    for task in family.tasks:
        out.print(styled((f"\n{task}", "bold"), f": restore {task} ... --model {family.name} tries, best first:"))
        chosen = False
        for c in resolve.candidates(family, task, catalog=cat):
            mark = ""
            if c.usable and not chosen:
                chosen = True
                mark = "  <- used now" if c.status != "downloadable" else "  <- downloaded and used now"
            out.print(styled(f"  {c.preset.name:28} {c.status:12} {c.preset.short_license:10} "
                             f"{_source_text(c.preset)}", (mark, "bold")), soft_wrap=True)
        if not chosen:
            out.print("  nothing usable now: download one of these (`restore models info PRESET` says where)",
                      soft_wrap=True)


@models_app.command("download")
def models_download(names: Annotated[list[str], typer.Argument(help="Preset names.", metavar="NAMES")]) -> None:
    """Fetch presets' weights into the cache for offline use."""
    from . import hub

    failed = 0
    for name in names:
        p = presets.get(name)
        try:
            path = hub.fetch_preset(p, offline=False, progress=True)
            out.print(f"{name}: {path}", soft_wrap=True)
        except RestoreError as e:
            err.print(styled((name, "red"), f": {e}"), soft_wrap=True)
            failed += 1
    raise typer.Exit(1 if failed else 0)


@models_app.command("remove")
def models_remove(names: Annotated[list[str], typer.Argument(help="Preset names.", metavar="NAMES")]) -> None:
    """Delete presets' cached weights."""
    from . import hub

    for name in names:
        p = presets.get(name)
        if p.source.kind == "bundled":
            raise UsageError(f"{name}: {p.source.kind} weights are not in the download cache")
        out.print(f"{name}: {'removed' if hub.remove(p.source) else 'not cached'}")


def main() -> None:
    """Console entry point: user errors become one line and an exit code, never a traceback."""
    try:
        # Standalone mode: click itself prints command-line mistakes (usage, "Error: ...", exit 2) and exits with
        # the code of typer.Exit; what reaches us is ours (RestoreError) or a bug. Catching click's exceptions
        # here instead would tie us to one click: typer 0.29 vendors its own copy, older typer uses click.
        app()
    except RestoreError as e:
        err.print(styled(("error:", "red"), f" {e}"), soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # inside a command click handles Ctrl-C itself; this is one outside it
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:
        if os.environ.get("RESTORE_DEBUG"):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        err.print(styled(("internal error:", "red"), f" {type(e).__name__}: {first} "
                         "(set RESTORE_DEBUG=1 for the traceback)"), soft_wrap=True)
        sys.exit(1)
