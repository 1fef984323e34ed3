"""WeightProgress: one line per interval, with the share searched and the time left."""

from __future__ import annotations

import logging

from onnxmp.passes.weight_progress import INTERVAL_S, WeightProgress


def test_logs_once_per_interval_with_share_and_time_left(caplog):
    now = [0.0]
    progress = WeightProgress(400, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="onnxmp.passes.weight_progress"):
        now[0] = 1.0
        progress.done(100, "w1 @ 8 bits")  # 1 s in: too soon
        now[0] = INTERVAL_S + 1.0
        progress.done(100, "w2 @ 8 bits")  # 6 s for 200 of 400 values: 6 s left
        now[0] = INTERVAL_S + 2.0
        progress.done(100, "w3 @ 8 bits")  # 1 s after the last line: quiet
    assert [r.getMessage() for r in caplog.records] == ["weight ranges: 50% (w2 @ 8 bits), about 6 s left"]
