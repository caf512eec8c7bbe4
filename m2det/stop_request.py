"""Ctrl-C during training: the first one stops at the next step boundary (after a checkpoint),
a second one at once; DataLoader workers leave it to the main process."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from m2det.cli import stderr_is_terminal


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :meth:`Trainer.fit` at a step boundary, after saving ``checkpoint`` (the
    message says where the run resumes from)."""

    def __init__(self, message: str, checkpoint: Path) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


class StopRequest:
    """While active (main thread only): the first Ctrl-C (SIGINT) asks the training loop to stop
    at the next step boundary; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def active(self, announce: bool) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum: int, frame: Any) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            if announce:
                start = "\n" if stderr_is_terminal() else ""  # below a progress bar
                print(f"{start}m2det-train: stopping after this step (Ctrl-C again to stop now)",
                      file=sys.stderr, flush=True)

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def ignore_sigint(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops at a step boundary."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
