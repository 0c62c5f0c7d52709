"""One exception hierarchy; the CLI is the only place that maps it to exit codes.

InputError  -> exit 2: the experiment, a unit, a reference or a file the user named is wrong.
               Raised before anything is started, so nothing is left behind.
RunError    -> exit 1: something failed while the testbed was acting on the machine.
"""
from __future__ import annotations


class TestbedError(Exception):
    """Base of every error the testbed raises on purpose."""

    exit_code = 1


class InputError(TestbedError):
    """Bad input: one sentence naming the key path or file."""

    exit_code = 2


class PreflightError(TestbedError):
    """The machine lacks something the run needs (image, daemon, tool); says the fix."""

    exit_code = 2


class RunError(TestbedError):
    """A failure while carrying out a plan."""

    exit_code = 1


class InterruptedAfterRun(KeyboardInterrupt):
    """Ctrl-C or SIGTERM that came while a run tore down: the run itself ended and its results
    are whole (`result`, a RunResult); the caller stops, but need not run it again."""

    def __init__(self, result) -> None:
        super().__init__()
        self.result = result
