"""Child processes that end with the process that started them.

`vplane up` runs its services and the embedded nats-server in sessions of their own, so
that a Ctrl-C reaches only `vplane up`, which then stops them in order. A `vplane up`
that is killed outright (SIGKILL, an OOM kill, a test harness giving up) never gets that
far; without a parent-death signal its children would keep running with nobody to stop
them, still ticking and holding the broker's port.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl: Callable[..., int] = libc.prctl
    return prctl


# Looked up once here: between fork and exec the child should call, not import or load.
_prctl = _load_prctl()


def ending_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for `subprocess.Popen` that has the child sent ``sig`` when the
    process that starts it ends; None where the platform has no such signal.

    The kernel ties the signal to the thread that forks, so a child started from a
    worker thread (a test restarting its broker through `asyncio.to_thread`) is left
    unarmed: it would be stopped when that pool thread ends, not with the process."""
    if _prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    prctl, parent = _prctl, os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        # The parent may have died before the signal was armed; then it never comes.
        if os.getppid() != parent:
            os._exit(1)

    return arm
