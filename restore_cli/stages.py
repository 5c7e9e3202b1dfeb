"""Three stages with bounded queues, so the device computes while pictures are read and written.

decode: a thread pool runs each unit's `load` (read a file or convert a decoded video frame, then
        `pixels.prepare`); a feeder thread walks the units in order and keeps a bounded number loading.
infer:  one thread owns the model: it takes loaded units in order, runs consecutive units with equal keys (same
        size and type) through `Runner.run_many` together, `batch` at a time, and hands each result on.
encode: a thread pool sized to the CPU cores runs `pixels.finish` and each unit's `save` (write a file, convert a
        frame for the video encoder).

`run_units` yields every unit's `Outcome` in the input order, so reports stay deterministic however the work
overlaps. Decoders, encoders (PNG, JPEG, PyAV) and torch release the GIL, so threads are enough. One unit's
failure is its outcome's error; the others go on. A stop request (Ctrl-C) ends the run after the forward pass in
flight: what was already restored is still saved, nothing after it starts, and `run_units` raises InterruptError.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import pixels
from .engine.runner import Runner, RunStats
from .errors import InterruptError


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class Unit:
    """One picture: how to load it, where its result goes, and whose it is."""

    owner: Any  # the caller's (a job)
    # decode pool: the picture ready for the model, or None when there is nothing to infer (a skipped file, an
    # end-of-video marker); may raise, which becomes the outcome's error
    load: Callable[[], pixels.Prepared | None] | None
    # encode pool: receives the restored array and the engine's stats; its return value is the outcome's value
    save: Callable[[np.ndarray, RunStats], Any] | None = None
    # checked before inference: a unit whose owner already failed is passed over
    alive: Callable[[], bool] = lambda: True
    decode_s: float = 0.0  # time the producer already spent on it (demuxing a video)


@dataclass
class Outcome:
    unit: Unit
    value: Any = None
    error: BaseException | None = None
    stats: RunStats | None = None  # None: the unit did not go through the model
    decode_s: float = 0.0
    infer_s: float = 0.0
    encode_s: float = 0.0


@dataclass
class _Loaded:
    unit: Unit
    prepared: pixels.Prepared | None = None
    error: BaseException | None = None
    decode_s: float = 0.0


@dataclass
class _Failure:  # an exception outside any unit (a bug in the producer): the run fails with it
    error: BaseException


_END = object()


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - t


@dataclass
class Stages:
    """The three stages around one model. `batch`: pictures per forward pass (when whole pictures fit)."""

    runner: Runner
    batch: int = 1
    decode_workers: int = field(default_factory=lambda: min(8, cpu_count()))
    encode_workers: int = field(default_factory=cpu_count)
    should_stop: Callable[[], bool] = lambda: False

    def run_units(self, units: Iterable[Unit]) -> Iterator[Outcome]:
        """Every unit's outcome, in order; raises InterruptError at the end when a stop request cut the run short."""
        run = _Run(self, units)
        try:
            yield from run.outcomes()
        finally:
            run.close()


class _Run:
    def __init__(self, stages: Stages, units: Iterable[Unit]) -> None:
        self.s = stages
        self.units = units
        self.batch = max(1, stages.batch)
        self.decode = ThreadPoolExecutor(max(1, stages.decode_workers), thread_name_prefix="restore-decode")
        self.encode = ThreadPoolExecutor(max(1, stages.encode_workers), thread_name_prefix="restore-encode")
        # bounded: memory stays flat however fast one stage runs ahead of another
        self.loaded: queue.Queue[Any] = queue.Queue(maxsize=max(2 * self.batch, stages.decode_workers + 1))
        self.done: queue.Queue[Any] = queue.Queue(maxsize=max(2 * self.batch, stages.encode_workers + 1))
        self.halt = threading.Event()  # inference stopped early: the feeder stops too
        self.cancel = threading.Event()  # the consumer went away: everything stops
        self.cut_short = False
        self.threads = [threading.Thread(target=self._feed, name="restore-feed", daemon=True),
                        threading.Thread(target=self._infer, name="restore-infer", daemon=True)]
        for t in self.threads:
            t.start()

    # -- plumbing ----------------------------------------------------------------------------------------------
    def _put(self, q: queue.Queue[Any], item: Any, *, upstream: bool = False) -> bool:
        while not self.cancel.is_set() and not (upstream and self.halt.is_set()):
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue[Any]) -> Any:
        while True:
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                if self.cancel.is_set():
                    return _END

    def _stopping(self) -> bool:
        if self.s.should_stop():
            self.cut_short = True
            return True
        return False

    # -- stage 1: decode -----------------------------------------------------------------------------------------
    def _feed(self) -> None:
        units = iter(self.units)
        try:
            for unit in units:
                if self._stopping() or self.halt.is_set():
                    break
                fut = self.decode.submit(_timed, unit.load) if unit.load is not None else None
                if not self._put(self.loaded, (unit, fut), upstream=True):
                    break
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(self.loaded, _Failure(e))
        finally:
            with contextlib.suppress(Exception):
                units.close()  # type: ignore[attr-defined]  # a generator's cleanup (open videos) runs here
            self._put(self.loaded, _END)

    # -- stage 2: infer ------------------------------------------------------------------------------------------
    def _next_loaded(self) -> Any:
        item = self._get(self.loaded)
        if item is _END or isinstance(item, _Failure):
            return item
        unit, fut = item
        if fut is None:
            return _Loaded(unit)
        try:
            prepared, seconds = fut.result()
        except BaseException as e:  # the unit's own failure
            return _Loaded(unit, error=e)
        return _Loaded(unit, prepared, decode_s=seconds)

    def _infer(self) -> None:
        pending: Any = None
        try:
            while not self.cancel.is_set():
                item = pending if pending is not None else self._next_loaded()
                pending = None
                if item is _END:
                    break
                if isinstance(item, _Failure):
                    self._put(self.done, item)
                    continue
                group = [item]
                if item.prepared is not None and item.unit.alive():
                    while len(group) < self.batch:
                        nxt = self._next_loaded()
                        if (not isinstance(nxt, _Loaded) or nxt.prepared is None or not nxt.unit.alive()
                                or nxt.prepared.key != item.prepared.key):
                            pending = nxt
                            break
                        group.append(nxt)
                if not self._run_group(group):
                    break
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(self.done, _Failure(e))
        finally:
            self.halt.set()
            self._put(self.done, _END)

    def _run_group(self, group: list[_Loaded]) -> bool:
        """Infer one group and queue its outcomes; False when a stop request ends the run."""
        ready = [g for g in group if g.prepared is not None and g.error is None and g.unit.alive()]
        if ready and self._stopping():
            return False
        results: dict[int, tuple[Any, RunStats | None, BaseException | None]] = {}
        if ready:
            try:
                results = self._forward(ready)
            except InterruptError:
                self.cut_short = True
                return False
        scale = self.s.runner.spec.scale
        for g in group:
            out, stats, error = results.get(id(g), (None, None, g.error))
            if out is None or error is not None:
                fut = None
            else:
                fut = self.encode.submit(self._save, g.unit, g.prepared, out, stats, scale)
            entry = (g, stats, error, fut)
            if not self._put(self.done, entry):
                return False
        return True

    def _forward(self, ready: list[_Loaded]) -> dict[int, tuple[Any, RunStats | None, BaseException | None]]:
        runner = self.s.runner
        first = ready[0].prepared
        assert first is not None
        try:
            # wait=False: on a GPU the results come down while the next batch computes (`stats.wait()` in _save)
            outs, stats = runner.run_many([g.prepared.tensor for g in ready],  # type: ignore[union-attr]
                                          quantize=first.quantize, wait=False)
            return {id(g): (o, st, None) for g, o, st in zip(ready, outs, stats, strict=True)}
        except InterruptError:
            raise
        except Exception as e:
            if len(ready) == 1:
                return {id(ready[0]): (None, None, e)}
        # one picture spoilt the batch: run them one by one, so only its own outcome fails
        results: dict[int, tuple[Any, RunStats | None, BaseException | None]] = {}
        for g in ready:
            results.update(self._forward([g]))
        return results

    @staticmethod
    def _save(unit: Unit, prepared: pixels.Prepared, out: Any, stats: RunStats, scale: int) -> tuple[Any, float]:
        stats.wait()
        t = time.perf_counter()
        array = pixels.finish(prepared, out, scale)
        value = unit.save(array, stats) if unit.save is not None else array
        return value, time.perf_counter() - t

    # -- stage 3: encode, results in order ----------------------------------------------------------------------
    def outcomes(self) -> Iterator[Outcome]:
        while True:
            item = self._get(self.done)
            if item is _END:
                break
            if isinstance(item, _Failure):
                raise item.error
            g, stats, error, fut = item
            outcome = Outcome(g.unit, error=error, stats=stats, decode_s=g.decode_s + g.unit.decode_s)
            if fut is not None:
                try:
                    outcome.value, outcome.encode_s = fut.result()
                except Exception as e:  # the unit's own failure (disk full, ...)
                    outcome.error = e
            if stats is not None:
                outcome.infer_s = stats.infer_s  # the device's time, known once the results came down
            yield outcome
        if self.cut_short:
            raise InterruptError("interrupted")

    def close(self) -> None:
        """Stop every thread (after the work in flight) and release the pools."""
        self.cancel.set()
        self.halt.set()
        for t in self.threads:
            while t.is_alive():
                for q in (self.loaded, self.done):  # unblock a producer waiting for room
                    with contextlib.suppress(queue.Empty):
                        while True:
                            q.get_nowait()
                t.join(timeout=0.05)
        self.decode.shutdown(wait=True, cancel_futures=True)
        self.encode.shutdown(wait=True, cancel_futures=True)
