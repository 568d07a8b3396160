"""Progress of a long loop: a tqdm bar on a terminal, log lines at intervals otherwise.

A job whose output goes to a file (nohup, a batch scheduler, an orchestrator) sees no bar,
so it gets a line every ``log_every_s`` seconds instead: count, smoothed rate, the caller's
fields, elapsed time and ETA. On a terminal the bar alone shows progress (no lines).
"""

from __future__ import annotations

import logging
import time
from types import TracebackType

from tqdm import tqdm

#: Seconds between lines when a caller does not choose (extraction, encoding).
DEFAULT_LOG_EVERY_S = 60.0
#: Weight of the newest window in the smoothed rate.
_SMOOTHING = 0.5

_logger = logging.getLogger(__name__)


class Progress:
    """Counts ``total`` units of work (steps, images) and reports them.

    Args:
        total: units in this loop.
        desc: what the loop is (``"epoch 2/16"``, ``"encode gallery"``).
        unit: name of one counted unit (``"step"``, ``"image"``).
        item_unit: name of what the rate counts (``"triplets"``); ``update``'s ``items``.
        log_every_s: seconds between lines off a terminal; 0 logs nothing; ``None``:
            ``DEFAULT_LOG_EVERY_S``.
        log_first: also log the line of the first update (it shows that the job started).
        later: units of the same work after this loop (the run's remaining epochs): the
            line adds an ETA for them at the current rate, plus ``later_s``.
        later_s: seconds of other work known to follow (validation, mining).
        enabled: ``False`` shows nothing (non-main ranks of a data-parallel job).
        logger: where lines go (the caller's module logger).
    """

    def __init__(
        self,
        total: int,
        *,
        desc: str,
        unit: str,
        item_unit: str | None = None,
        log_every_s: float | None = None,
        log_first: bool = False,
        later: int | None = None,
        later_s: float = 0.0,
        enabled: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.item_unit = item_unit or f"{unit}s"
        self.later, self.later_s = later, later_s
        self.logger = logger or _logger
        # disable=None: tqdm itself turns the bar off when its stream is not a terminal
        self.bar = tqdm(
            total=total, desc=desc, unit=unit, leave=False, disable=None if enabled else True
        )
        every = DEFAULT_LOG_EVERY_S if log_every_s is None else log_every_s
        self.log_every_s = every if enabled and self.bar.disable and every > 0 else None
        self.log_first = log_first
        self.n = self.items = self.lines = 0
        self.start = self._mark = time.perf_counter()
        self._mark_n = self._mark_items = 0
        self._step_rate: float | None = None  # smoothed units/s
        self._item_rate: float | None = None  # smoothed items/s

    def update(self, n: int = 1, items: int | None = None, **fields: str) -> None:
        """Count ``n`` units (``items`` items, default ``n``); ``fields`` join the bar/line."""
        self.n += n
        self.items += n if items is None else items
        if not self.bar.disable:
            self.bar.update(n)
            if fields:
                self.bar.set_postfix(fields, refresh=False)
            return
        if self.log_every_s is None:
            return
        now = time.perf_counter()
        first = self.lines == 0 and self.log_first
        if first or now - self._mark >= self.log_every_s:
            self._log(now, fields)

    def _log(self, now: float, fields: dict[str, str]) -> None:
        seconds = max(now - self._mark, 1e-9)
        steps, items = (self.n - self._mark_n) / seconds, (self.items - self._mark_items) / seconds
        # the first step carries start-up costs: a later window starts the average afresh
        fresh = self.lines == 1 and self.log_first
        if fresh or self._step_rate is None or self._item_rate is None:
            self._step_rate, self._item_rate = steps, items
        else:
            self._step_rate += _SMOOTHING * (steps - self._step_rate)
            self._item_rate += _SMOOTHING * (items - self._item_rate)
        self._mark, self._mark_n, self._mark_items = now, self.n, self.items
        self.lines += 1
        self.logger.info("%s", self.line(now, fields))

    def eta(self) -> float:
        """Seconds left in this loop at the smoothed rate (``inf`` before any rate)."""
        rate = self._step_rate or 0.0
        return (self.total - self.n) / rate if rate > 0 else float("inf")

    def line(self, now: float, fields: dict[str, str]) -> str:
        """The log line: ``desc: unit n/total, rate, fields, elapsed, ETA [(run ...)]``."""
        parts = [
            f"{self.desc}: {self.unit} {self.n}/{self.total}",
            f"{self._item_rate or 0.0:.1f} {self.item_unit}/s",
            *(f"{name} {value}" for name, value in fields.items()),
            f"elapsed {_clock(now - self.start)}",
        ]
        eta = self.eta()
        text = f"ETA {_clock(eta)}"
        if self.later is not None:
            rate = self._step_rate or 0.0
            later = self.later / rate if rate > 0 else float("inf")
            text += f" (run {_clock(eta + later + self.later_s)})"
        return ", ".join([*parts, text])

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _clock(seconds: float) -> str:
    """``[H:]MM:SS`` as tqdm writes it; ``?`` when unknown."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    return str(tqdm.format_interval(max(0.0, seconds)))
