"""What every child process of a search does first (TensorFlow-free): die with the search
process, and leave Ctrl-C to it."""

from __future__ import annotations

import signal


def die_with_parent() -> None:
    """Linux: the kernel kills this process when the search process dies (even by kill -9).

    A parent that died before this took effect closed the pipe: the child's first read ends it.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def leave_ctrl_c_to_the_parent() -> None:
    """Ignore SIGINT (Ctrl-C is the search process's to handle), then unblock it: the search
    starts its children with SIGINT blocked (``automl.search.worker.sigint_deferred``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
