"""Progress of the weight range search, logged every few seconds.

Why: on models of 60-150 M parameters the per-channel MSE search over every weight takes
minutes; a run that prints nothing for minutes looks hung. One INFO line every
`INTERVAL_S` seconds (`-v`) says how far it is, by weight values searched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

INTERVAL_S = 5.0


class WeightProgress:
    """Counts searched weight values out of `total`; logs when `INTERVAL_S` passed since the last line."""

    def __init__(self, total: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.searched, self._clock = max(1, total), 0, clock
        self._start = self._last = clock()

    def done(self, size: int, what: str) -> None:
        self.searched += size
        now = self._clock()
        if now - self._last >= INTERVAL_S:
            self._last = now
            left = (now - self._start) * (self.total - self.searched) / max(1, self.searched)
            logger.info("weight ranges: %.0f%% (%s), about %.0f s left", 100 * self.searched / self.total, what, left)
