"""Helpers for tests that start onnxmp in a child process and signal it."""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """`preexec_fn`: a foreground job's Ctrl-C, whatever the test inherited. A shell starts
    background jobs (a CI script run with `&`, and so this suite) with SIGINT ignored, and a
    child started with SIGINT ignored keeps ignoring it, as any Unix program must."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
