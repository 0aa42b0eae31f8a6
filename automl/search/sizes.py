"""Float32 ``.tflite`` sizes converted in the background while a search without limits runs
(TensorFlow-free: the search side of :mod:`automl.trial.background_sizes`).

Such a search needs sizes only for its leaderboard: the trial worker measures an architecture's
latency between trials and looks its size up (``convert=False``), while one process at the
lowest CPU priority converts the space's backbones that this machine has not converted yet; it
begins when the run's first trial has ended and is paused while a latency is measured. The
leaderboard fills the sizes in as they arrive (:func:`fill`); at the end the search waits for
the rest, and that wait counts as measuring time (``record.add_size_seconds``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

from automl.search import record
from automl.search.worker import sigint_deferred
from automl.trial import size_store

log = logging.getLogger("automl")

#: The module whose ``serve`` runs in the background process (imported there, by name).
CONVERTER_MODULE = "automl.trial.background_sizes"
WAIT_LIMIT = 600.0  # seconds the end of a search waits for the last conversions


def missing(backbones: list[str], n_classes: int) -> list[str]:
    """The backbones whose float32 size this machine does not know."""
    return [b for b in backbones if size_store.known_bytes(b, n_classes) is None]


def fill(study: Any, n_classes: int, converted: dict[str, int] | None = None) -> None:
    """Give every measured architecture of the study whose size is not known yet the size
    ``converted`` holds (what a background process sent) or this machine has kept since
    (nothing to do once all are known)."""
    for key, entry in record.measured_costs(study).items():
        part = entry.get("backbone")
        if not part or part.get("tflite_bytes") is not None:
            continue
        backbone = key.rsplit("@", 1)[0]
        nbytes = (converted or {}).get(backbone)
        if nbytes is None:
            nbytes = size_store.known_bytes(backbone, n_classes)
        if nbytes is not None:
            record.write_cost(study, key, {**entry, "backbone": {**part, "tflite_bytes": nbytes}})


def unsized(study: Any, n_classes: int, converted: dict[str, int] | None = None) -> list[str]:
    """The backbones the study measured whose size is known neither in the study, nor in
    ``converted``, nor on this machine."""
    out = []
    for key, entry in record.measured_costs(study).items():
        backbone = key.rsplit("@", 1)[0]
        part = entry.get("backbone") or {}
        if (backbone not in out and part and part.get("tflite_bytes") is None
                and backbone not in (converted or {})
                and size_store.known_bytes(backbone, n_classes) is None):
            out.append(backbone)
    return out


class BackgroundSizes:
    """The background conversion of a search's backbones: one process, begun once the first
    trial of the run has ended (its start-up and TensorFlow import would slow the first
    result), paused while the trial worker measures a latency (it would slow that too)."""

    def __init__(self, backbones: list[str], image_size: int, n_classes: int) -> None:
        self.backbones, self.image_size, self.n_classes = list(backbones), image_size, n_classes
        self.cpu_seconds, self.errors = 0.0, {}
        self.converted: dict[str, int] = {}  # also when this machine's store is read-only
        self._done = False
        self._proc: Any = None
        self._conn: Any = None

    def begin(self) -> None:
        """Start the process (once)."""
        if self._proc is not None:
            return
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe(duplex=False)
        self._proc = context.Process(target=_child_main,
                                     args=(child, self.backbones, int(self.image_size),
                                           int(self.n_classes), os.getpid()),
                                     daemon=True, name="automl-tflite-sizes")
        try:
            with sigint_deferred():
                self._proc.start()
        except BaseException:  # Ctrl-C while it started: end it with the search
            self.stop()
            raise
        finally:
            child.close()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stop the process's CPU use meanwhile (SIGSTOP, then SIGCONT)."""
        alive = self._proc is not None and self._proc.is_alive()
        if alive:
            os.kill(self._proc.pid, signal.SIGSTOP)
            _until_stopped(self._proc.pid)
        try:
            yield
        finally:
            if alive and self._proc.is_alive():
                os.kill(self._proc.pid, signal.SIGCONT)

    @classmethod
    def start(cls, backbones: list[str], image_size: int,
              n_classes: int) -> BackgroundSizes | None:
        """Converting the backbones this machine has no size of (None: it has them all), to
        :meth:`begin`."""
        todo = missing(backbones, n_classes)
        return cls(todo, image_size, n_classes) if todo else None

    def _read(self, timeout: float) -> None:
        """Take in what the process said within ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while not self._done and self._conn is not None:
            left = end - time.monotonic()
            try:
                if not self._conn.poll(max(0.0, left)):
                    return
                reply = self._conn.recv()
            except (EOFError, OSError):  # it died (killed, out of memory): the sizes stay blank
                self._done = True
                return
            if reply is None:
                self._done = True
                return
            self.cpu_seconds += float(reply.get("seconds", 0.0))
            if "bytes" in reply:
                self.converted[reply["backbone"]] = int(reply["bytes"])
            if "error" in reply:
                self.errors[reply["backbone"]] = reply["error"]
                log.warning("could not convert %s to .tflite for its size: %s",
                            reply["backbone"], reply["error"])

    def fill(self, study: Any) -> None:
        """:func:`fill` with what this process has sent so far."""
        self._read(0.0)
        fill(study, self.n_classes, self.converted)

    def finish(self, study: Any, note: Callable[[str], None]) -> float:
        """Wait (up to ``WAIT_LIMIT`` s) for the conversions of the backbones the study's trials
        used, fill the study's sizes in, stop the process (a backbone no trial used is left for
        a later search) and return the seconds waited (added to the study's measuring time)."""
        self._read(0.0)
        waited, start = 0.0, time.monotonic()
        needed = self._needed(study)
        if needed:
            self.begin()  # not yet if no trial ended in this run (a resume that only fills in)
        if needed and not self._done:
            note(f"waiting for the float32 .tflite size of {', '.join(needed)} (converted in "
                 f"the background; at most {WAIT_LIMIT:.0f} s)")
            while needed and not self._done and time.monotonic() - start < WAIT_LIMIT:
                self._read(0.5)
                needed = self._needed(study)
            waited = time.monotonic() - start
            if needed:
                note(f"no float32 .tflite size for {', '.join(needed)}: its size_mb stays blank "
                     "(the next run of this command fills it in)")
        self.stop()
        fill(study, self.n_classes, self.converted)
        record.add_size_seconds(study, wait=waited, cpu=self.cpu_seconds)
        return waited

    def _needed(self, study: Any) -> list[str]:
        return [b for b in unsized(study, self.n_classes, self.converted)
                if b in self.backbones and b not in self.errors]

    def stop(self) -> None:
        """End the process (at once: what it converted is kept already)."""
        if self._proc is not None and self._proc.pid is not None:  # started
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(timeout=10)
        if self._conn is not None:
            self._conn.close()


def _until_stopped(pid: int, timeout: float = 1.0) -> None:
    """Wait until a process signalled SIGSTOP has stopped (Linux's /proc; elsewhere at once)."""
    stat = f"/proc/{pid}/stat"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(stat) as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("T", "t", "Z", "X"):
                    return
        except (OSError, IndexError):
            return
        time.sleep(0.002)


def _child_main(conn: Any, backbones: list[str], image_size: int, n_classes: int,
                parent: int) -> None:
    import importlib

    importlib.import_module(CONVERTER_MODULE).serve(conn, backbones, image_size, n_classes,
                                                    parent)
