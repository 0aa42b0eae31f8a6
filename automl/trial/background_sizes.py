"""The background process that converts a search's backbones to float32 ``.tflite`` files for
their sizes (:func:`automl.trial.cost.convert_size`), at the lowest CPU priority.

A search without cost limits needs the sizes only for its leaderboard, not before training, so
the 10-15 s a backbone takes to convert run on the CPU the trials leave idle (head-only trials
use about one core of two) rather than between trials. Each size is kept in
:mod:`automl.trial.size_store` as it is done, and the search reads it from there. Started by
:class:`automl.search.sizes.BackgroundSizes`; it tells the search what it converted and how long
each took through ``conn``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from automl.trial.child import die_with_parent, leave_ctrl_c_to_the_parent
from automl.trial.quiet import quiet_tensorflow


def serve(conn: Any, backbones: list[str], image_size: int, n_classes: int,
          parent: int | None = None) -> None:
    """Convert each backbone whose size this machine does not know; send one dict per backbone
    (``backbone``, ``bytes`` or ``error``, ``seconds``: CPU seconds), then ``None``.
    ``parent``: the search's process id (gone before :func:`die_with_parent` took effect: stop)."""
    die_with_parent()
    if parent is not None and os.getppid() != parent:
        return
    leave_ctrl_c_to_the_parent()
    try:
        os.nice(19)  # the trials come first
    except OSError:
        pass
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    quiet_tensorflow()
    _silence()  # the converter's C++ runtime logs its own start-up lines; errors go by ``conn``
    from automl.trial import size_store
    from automl.trial.cost import convert_size
    from automl.trial.model import reset_keras

    for backbone in backbones:
        if size_store.known_bytes(backbone, n_classes) is not None:
            continue
        start = time.process_time()
        reply: dict[str, Any] = {"backbone": backbone}
        try:
            reset_keras(0)
            reply["bytes"] = convert_size(backbone, image_size, n_classes)
        except Exception as exc:  # the search says it and leaves the size blank
            text = str(exc).splitlines()[0][:300] if str(exc) else ""
            reply["error"] = f"{type(exc).__name__}: {text}"
        reply["seconds"] = time.process_time() - start
        try:
            conn.send(reply)
        except OSError:  # the search is gone
            return
    try:
        conn.send(None)
    except OSError:
        pass


def _silence() -> None:
    """Point this process's stdout and stderr at /dev/null: it shares the search's terminal,
    and the converter prints to both from C++ (no Python setting reaches it)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
