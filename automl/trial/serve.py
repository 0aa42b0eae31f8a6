"""The trial worker process: it imports TensorFlow, builds the search context once and runs
trials sent by the search process (:class:`automl.search.worker.TrialWorker`) until told to close.

See :mod:`automl.trial.messages` for the conversation. After each trial it frees the model and
Keras state and reports its memory, so the search can replace a worker that grew.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import traceback
from typing import Any

from automl.backbones.weights import WeightsResolver
from automl.data.splits import image_cache_dir
from automl.errors import AutoMLError
from automl.trial import messages
from automl.trial.child import die_with_parent, leave_ctrl_c_to_the_parent
from automl.trial.features import FeatureCache
from automl.trial.quiet import quiet_tensorflow
from automl.trial.run import SearchContext, run_trial, trains_on_cache
from automl.trial.trainlog import TrainLog


class _Stop(Exception):  # noqa: N818 - a signal, not an error
    """The search process said to stop this trial (pruned)."""


def serve(conn: Any, setup: messages.WorkerSetup | None = None) -> None:
    """The worker process: import TensorFlow, build the context once, then run trials until
    told to close.

    A worker started early (as the search starts, to import TensorFlow while the search loads
    the data and opens the study) has no ``setup`` yet: it reads it from the pipe.
    """
    die_with_parent()
    leave_ctrl_c_to_the_parent()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    quiet_tensorflow()
    if setup is None:
        try:
            setup = conn.recv()
        except (EOFError, OSError):  # the search ended (or failed) before it ran a trial
            return
        if not isinstance(setup, messages.WorkerSetup):  # Close
            return
    logging.getLogger("automl").setLevel(setup.log_level)
    if setup.image_cache_dir is not None:
        image_cache_dir(setup.image_cache_dir)
    run = setup.run
    ctx = SearchContext(setup.data, run, WeightsResolver(run.weights, run.weights_dir,
                                                         seed=run.seed),
                        FeatureCache(setup.cache_dir, setup.cache_bytes), setup.trials_dir)
    conn.send(messages.Ready(os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if isinstance(msg, messages.MeasureCost):
            conn.send(_measure(ctx, msg))
            continue
        if not isinstance(msg, messages.RunTrial):  # Close
            return
        conn.send(_run_one(conn, ctx, msg))


def _run_one(conn: Any, ctx: SearchContext, msg: messages.RunTrial,
             ) -> messages.Done | messages.Stopped | messages.Failed:
    """Run one trial, asking after every epoch whether to go on; its outcome as a message."""
    train_log = TrainLog()

    def reporter(epoch: int, row: dict[str, float]) -> None:
        conn.send(messages.Epoch(epoch, row, list(train_log.epochs)))
        if not conn.recv().go:
            raise _Stop

    result = failure = None
    try:
        result = run_trial(msg.config, dataclasses.replace(ctx, run=msg.run), msg.number,
                       reporter, train_log, msg.warm)
    except _Stop:
        pass
    except AutoMLError as exc:
        failure = (type(exc).__name__, str(exc), None)
    except Exception as exc:  # out of memory, a backbone that breaks at this size, ...
        text = str(exc).splitlines()[0][:300] if str(exc) else ""
        failure = ("TrialFailed", f"{type(exc).__name__}: {text}" if text
                   else type(exc).__name__, traceback.format_exc())
    _release(ctx, trains_on_cache(msg.config, msg.run))
    end = messages.TrialEnd(list(train_log.epochs), train_log.best_phase, train_log.seconds,
                   _memory(ctx), train_log.heavy)
    if result is not None:
        return messages.Done(result, end)
    if failure is not None:
        return messages.Failed(failure[0], failure[1], end, failure[2])
    return messages.Stopped(end)


def _measure(ctx: SearchContext, msg: messages.MeasureCost) -> messages.Cost | messages.Failed:
    """An architecture's serving cost, or why it could not be measured."""
    from automl.trial.cost import measure

    try:
        return messages.Cost(measure(msg.backbone, msg.image_size, len(ctx.data.class_names),
                                     list(msg.head_widths), msg.features, msg.convert))
    except Exception as exc:
        text = str(exc).splitlines()[0][:300] if str(exc) else ""
        end = messages.TrialEnd([], 1, 0.0, _memory(ctx), True)
        return messages.Failed("TrialFailed", f"measuring the cost of {msg.backbone} at "
                               f"{msg.image_size} px failed: {type(exc).__name__}: {text}", end,
                               traceback.format_exc())
    finally:
        from automl.trial.model import reset_keras

        reset_keras(ctx.run.seed)


def _release(ctx: Any, cached: bool) -> None:
    """After a trial: free its model and TensorFlow state now, not at the next trial's start.

    A trial on cached activations needed the resized images only to extract them, and
    resizing again costs well under a second, so they go too; trials that train on images
    (augmentation, no feature cache) keep them for the next such trial.
    """
    from automl.trial.model import reset_keras

    if cached:
        ctx.data.drop_resized()
    reset_keras(ctx.run.seed)


def _memory(ctx: Any) -> messages.Memory:
    """This process's resident memory and what its bounded caches hold."""
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is the best there is
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss = peak if sys.platform == "darwin" else peak * 1024
    cached = ctx.cache.memory_bytes + ctx.data.cached_bytes()
    return messages.Memory(rss / 2**20, cached / 2**20)
