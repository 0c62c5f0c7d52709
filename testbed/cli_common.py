"""What every command shares: the consoles and the SIGTERM handler."""
from __future__ import annotations

from rich.console import Console

# soft_wrap: a sentence stays on one line when the output is a pipe or a log
console = Console(soft_wrap=True)
if not console.is_terminal:
    console.width = 132     # tables in logs and pipes: wide enough not to truncate
err = Console(stderr=True, soft_wrap=True)


def sigterm_as_interrupt(signum, frame):
    # Same path as Ctrl-C: the orchestrator's finally tears the run down and writes partial results.
    raise KeyboardInterrupt
