"""Family names as models: `--model ufpnet` -> the best preset of that family for the task that can be had now.

weights.toml's `[families]` table lists, per family and task, presets best first: published weights first, the
model this project bundles last. The first candidate whose file is cached, or downloads now, is used; a candidate
that cannot be had (not cached while offline, a download that fails, a host that needs a manual download) is
skipped and its reason goes into one line for the user, e.g.

    ufpnet: ufpnet-gopro not cached (offline); using bundled ufpnet-s

A name is a family when it is a `[families]` key or any name the archs registry knows for an architecture of that
family (our id, the upstream class name, an alias), case-insensitive. Preset names win over family names; hf://
URIs and weights files are never family names. Availability is asked only through hub.is_cached / hub.fetch, so
new kinds of downloadable sources need no change here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from . import hub, presets
from .errors import UsageError, WeightsError
from .presets import Catalog, Family, Preset

__all__ = ["Candidate", "Choice", "Skip", "arch_names", "candidates", "choose", "family_label", "family_named",
           "find_family", "looks_like_file", "pick_task", "status"]

WEIGHT_SUFFIXES = hub.WEIGHT_SUFFIXES
Status = Literal["bundled", "cached", "downloadable", "manual", "offline", "missing"]


@dataclass(frozen=True)
class Skip:
    """A candidate that could not be had, with the reason (one line) and a shorter form for the note."""

    preset: Preset
    reason: str
    short: str


@dataclass(frozen=True)
class Choice:
    """The preset a family name resolved to, its local weights file, and what was skipped on the way."""

    family: str
    task: str
    preset: Preset
    path: Path
    how: Literal["bundled", "cached", "downloaded"]
    skipped: tuple[Skip, ...] = ()

    @property
    def fallback(self) -> bool:
        """True when a better candidate was skipped (worth telling even a quiet run)."""
        return bool(self.skipped)

    @property
    def note(self) -> str:
        """The one line: `<family>: <why the better ones were skipped>; using <preset>`."""
        using = (f"using bundled {self.preset.name}" if self.how == "bundled"
                 else f"using {self.preset.name} ({self.how})")
        if not self.skipped:
            return f"{self.family}: {using}"
        first, rest = self.skipped[0], self.skipped[1:]
        if rest and all(s.short.endswith(" not cached (offline)") for s in self.skipped):
            why = ", ".join(s.preset.name for s in self.skipped) + " not cached (offline)"
        else:
            why = first.short + (f" (also skipped {', '.join(s.preset.name for s in rest)})" if rest else "")
        return f"{self.family}: {why}; {using}"


@dataclass(frozen=True)
class Candidate:
    """One entry of a family's chain and whether its weights can be had now (no network asked)."""

    preset: Preset
    status: Status

    @property
    def usable(self) -> bool:
        return self.status in ("bundled", "cached", "downloadable")


def looks_like_file(model: str) -> bool:
    """A --model value that is a weights file (by suffix or because the file exists), never a name."""
    path = Path(model).expanduser()
    return path.suffix.lower() in WEIGHT_SUFFIXES or path.is_file()


def family_named(model: str, catalog: Catalog | None = None) -> Family | None:
    """The family a --model value stands for, or None when it is an hf:// URI, a weights file or a preset
    (those win), or no family at all. Raises UsageError for a registered architecture without a family entry."""
    cat = catalog or presets.catalog()
    if model.startswith("hf://") or looks_like_file(model) or model in cat.presets:
        return None
    return find_family(model, cat)


def find_family(name: str, catalog: Catalog | None = None) -> Family | None:
    """`[families]` key or registered architecture name (case-insensitive) -> its Family; None if neither."""
    cat = catalog or presets.catalog()
    key = name.lower()
    if key in cat.families:
        return cat.families[key]
    entry = _registry_entry(name)
    if entry is None:
        return None
    found = _families_by_registry(cat).get(entry[1])
    if found is None:
        raise UsageError(f"{name} is a {entry[1]} architecture without recommended presets (no [families] "
                         "entry); name a preset (`restore models list`) or pass a weights file")
    return cat.families[found]


def arch_names(family: Family, catalog: Catalog | None = None) -> list[str]:
    """Every registry name (arch id, upstream class, alias) that resolves to this family, sorted."""
    import archs

    cat = catalog or presets.catalog()
    mine = {reg for reg, key in _families_by_registry(cat).items() if key == family.name}
    found: dict[str, str] = {}  # lower -> first spelling: names match case-insensitively
    for e in map(archs.entry, archs.names()):
        if e.family in mine:
            for n in (e.id, e.cls.__name__, *e.aliases):
                found.setdefault(n.lower(), n)
    return sorted(found.values(), key=str.lower)


def family_label(preset: Preset, catalog: Catalog | None = None) -> str:
    """The family name to show for a preset: its [families] key when it has one, else the arch as written."""
    cat = catalog or presets.catalog()
    for fam in cat.families.values():
        if any(preset.name in chain for chain in fam.chains.values()):
            return fam.name
    entry = _registry_entry(preset.arch)
    found = _families_by_registry(cat).get(entry[1]) if entry else None
    return found or (entry[0] if entry else preset.arch.lower())


def pick_task(family: Family, task: str | None) -> str:
    """The task to resolve for: the one asked for (it must be served), or the family's only one."""
    if task is None:
        if len(family.tasks) == 1:
            return family.tasks[0]
        raise UsageError(f"{family.name} serves {_and(family.tasks)}: name the task")
    if task not in family.chains:
        raise UsageError(f"{family.name} has no {task} model; it serves {_and(family.tasks)} "
                         f"(e.g. `restore {family.tasks[0]} ... --model {family.name}`)")
    return task


def candidates(family: Family, task: str, *, offline: bool = False, catalog: Catalog | None = None
               ) -> list[Candidate]:
    """The chain for one task with each preset's status now, best first (nothing downloaded, no network)."""
    cat = catalog or presets.catalog()
    return [Candidate(cat.presets[name], status(cat.presets[name], offline=offline)) for name in family.chains[task]]


def status(preset: Preset, *, offline: bool = False) -> Status:
    """Where a preset's weights stand, without the network: bundled / cached / downloadable / manual (the host
    needs a manual download) / offline (not cached and no download allowed) / missing (bundled file absent)."""
    source = preset.source
    if hub.is_cached(source):
        return "bundled" if source.kind == "bundled" else "cached"
    if source.kind == "bundled":
        return "missing"
    if hub.is_offline(offline):
        return "offline"
    if source.kind == "url":
        from . import urls

        return "manual" if urls.is_manual(source) else "downloadable"
    return "downloadable"


def choose(family: Family, task: str | None, *, offline: bool = False, progress: bool = True,
           catalog: Catalog | None = None) -> Choice:
    """Try the family's presets for the task in order; the first whose weights are cached or download now wins.

    A WeightsError from hub.fetch (not cached while offline, not on the Hub, network down, manual-download host,
    checksum mismatch) moves on to the next candidate. None left: WeightsError naming them and where to get them.
    """
    cat = catalog or presets.catalog()
    task = pick_task(family, task)
    skipped: list[Skip] = []
    for name in family.chains[task]:
        preset = cat.presets[name]
        was_cached = hub.is_cached(preset.source)
        try:
            path = hub.fetch_preset(preset, offline=offline, progress=progress)
        except WeightsError as e:
            reason = str(e)
            offline_miss = hub.is_offline(offline) and not was_cached and preset.source.kind != "bundled"
            short = f"{name} not cached (offline)" if offline_miss else _short(name, reason)
            skipped.append(Skip(preset, reason, short))
            continue
        how: Literal["bundled", "cached", "downloaded"] = (
            "bundled" if preset.source.kind == "bundled" else "cached" if was_cached else "downloaded")
        return Choice(family.name, task, preset, path, how, tuple(skipped))
    first = skipped[0]
    others = ", ".join(s.preset.name for s in skipped[1:])
    raise WeightsError(f"{family.name}: no {task} weights available: {first.reason}"
                       + (f" (also tried {others}; see `restore models info {family.name}`)" if others else ""))


def _short(name: str, reason: str) -> str:
    """First clause of a fetch error, led by the preset name: enough to say why, one line."""
    clause = reason.split("; ")[0]
    return clause if clause.startswith(name) else f"{name}: {clause}"


def _and(items: tuple[str, ...]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" and {items[-1]}"


def _registry_entry(name: str) -> tuple[str, str] | None:
    """(arch id, family) of an arch name in the archs registry, or None when unregistered. Imports archs (torch)
    on first use only: [families] keys resolve without it."""
    import archs

    try:
        e = archs.entry(name)
    except KeyError:
        return None
    return e.id, e.family


@lru_cache(maxsize=4)
def _families_by_registry(catalog: Catalog) -> dict[str, str]:
    """Registry family (e.g. "UFPNet") -> [families] key, from the archs of each family's presets."""
    found: dict[str, str] = {}
    for fam in catalog.families.values():
        for chain in fam.chains.values():
            for name in chain:
                entry = _registry_entry(catalog.presets[name].arch)
                if entry is not None:
                    found.setdefault(entry[1], fam.name)
    return found
