"""Ctrl-C and SIGTERM while a run tears down: noted, not obeyed, until everything of the run
is removed. A second Ctrl-C is what an impatient user types; obeyed, it would leave
containers, veths and bridges behind (kill -9 still can: then `testbed clean`).
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

NOTICE = (b"\ntestbed: tearing the run down; it removes every container, veth and bridge of the run "
          b"first (kill -9 would leave them: then testbed clean)\n")


@contextmanager
def signals_deferred():
    """Within: SIGINT and SIGTERM are recorded in the yielded list (their names) instead of
    raising. Only the main thread can set handlers; elsewhere this does nothing."""
    got: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def note(signum, frame):
        got.append(signal.Signals(signum).name)
        os.write(2, NOTICE)       # plain write: safe inside a signal handler, unlike the console

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, note)
    try:
        yield got
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
