"""Float32 ``.tflite`` sizes converted in the background while a search without limits runs
(TensorFlow-free: the search side of :mod:`automl.trial.background_sizes`).

Such a search needs sizes only for its leaderboard: the trial worker measures an architecture's
latency between trials and looks its size up (``convert=False``), while one process at the
lowest CPU priority converts the space's backbones that this machine has not converted yet. The
leaderboard fills the sizes in as they arrive (:func:`fill`); at the end the search waits for
the rest, and that wait counts as measuring time (``record.add_size_seconds``).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable
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


def fill(study: Any, n_classes: int) -> None:
    """Give every measured architecture of the study whose size is not known yet the size this
    machine has converted since (nothing to do once all are known)."""
    for key, entry in record.measured_costs(study).items():
        part = entry.get("backbone")
        if not part or part.get("tflite_bytes") is not None:
            continue
        nbytes = size_store.known_bytes(key.rsplit("@", 1)[0], n_classes)
        if nbytes is not None:
            record.write_cost(study, key, {**entry, "backbone": {**part, "tflite_bytes": nbytes}})


def _unsized(study: Any, backbones: list[str], n_classes: int) -> list[str]:
    """The backbones among ``backbones`` that the study measured but whose size is not known
    yet, neither in the study nor on this machine."""
    out = []
    for key, entry in record.measured_costs(study).items():
        backbone = key.rsplit("@", 1)[0]
        part = entry.get("backbone") or {}
        if (backbone in backbones and backbone not in out and part
                and part.get("tflite_bytes") is None
                and size_store.known_bytes(backbone, n_classes) is None):
            out.append(backbone)
    return out


class BackgroundSizes:
    """The background conversion of a search's backbones (one process, started at once)."""

    def __init__(self, backbones: list[str], image_size: int, n_classes: int) -> None:
        self.backbones, self.n_classes = list(backbones), int(n_classes)
        self.cpu_seconds, self.errors = 0.0, {}
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe(duplex=False)
        self._proc = context.Process(target=_child_main,
                                     args=(child, self.backbones, int(image_size),
                                           self.n_classes),
                                     daemon=True, name="automl-tflite-sizes")
        with sigint_deferred():
            self._proc.start()
        child.close()
        self._done = False

    @classmethod
    def start(cls, backbones: list[str], image_size: int,
              n_classes: int) -> BackgroundSizes | None:
        """Start converting the backbones this machine has no size of (None: it has them all)."""
        todo = missing(backbones, n_classes)
        return cls(todo, image_size, n_classes) if todo else None

    def _read(self, timeout: float) -> None:
        """Take in what the process said within ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while not self._done:
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
            if "error" in reply:
                self.errors[reply["backbone"]] = reply["error"]
                log.warning("could not convert %s to .tflite for its size: %s",
                            reply["backbone"], reply["error"])

    def finish(self, study: Any, note: Callable[[str], None]) -> float:
        """Wait (up to ``WAIT_LIMIT`` s) for the conversions of the backbones the study's trials
        used, fill the study's sizes in, stop the process (a backbone no trial used is left for
        a later search) and return the seconds waited (added to the study's measuring time)."""
        self._read(0.0)
        waited, start = 0.0, time.monotonic()
        needed = _unsized(study, self.backbones, self.n_classes)
        if needed and not self._done:
            note(f"waiting for the float32 .tflite size of {', '.join(needed)} (converted in "
                 "the background)")
            while needed and not self._done and time.monotonic() - start < WAIT_LIMIT:
                self._read(0.5)
                needed = _unsized(study, self.backbones, self.n_classes)
            waited = time.monotonic() - start
        self.stop()
        fill(study, self.n_classes)
        record.add_size_seconds(study, wait=waited, cpu=self.cpu_seconds)
        return waited

    def stop(self) -> None:
        """End the process (at once: what it converted is kept already)."""
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join(timeout=10)
        self._conn.close()


def _child_main(conn: Any, backbones: list[str], image_size: int, n_classes: int) -> None:
    import importlib

    importlib.import_module(CONVERTER_MODULE).serve(conn, backbones, image_size, n_classes)
