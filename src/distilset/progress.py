"""Progress of long loops: a tqdm bar on a terminal, plain log lines anywhere else (a pipe, a log file, CI).

``Progress(total, desc, enabled)`` draws tqdm's bar when stderr is a terminal; otherwise it prints one line
to stderr after the first 5 seconds, then every tenth of the loop or every 30 seconds, whichever comes first,
and at the end:

    distill dd: 120/400 (30 %), loss 0.412, 0.21 s/it, ETA 59 s

so a run under ``nohup`` or in a batch job still shows where it is and when it will end. A loop that ends
within three seconds prints nothing. ``within(fraction)`` reports progress inside the current step (a net being
trained by ``evaluate``), so a loop of a few long steps still prints a line every 30 seconds.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping

from tqdm import tqdm


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"


class Progress:
    """Count steps ``initial .. total``; ``update(values)`` after each, ``close()`` at the end."""

    LINE_EVERY_S = 30.0
    FIRST_LINE_S = 5.0  # the first line (with its ETA) comes this soon
    QUIET_S = 3.0  # a loop shorter than this prints no line at all

    def __init__(self, total: int, desc: str, enabled: bool = True, initial: int = 0, leave: bool = True):
        self.total, self.desc, self.done = total, desc, initial
        self.bar = None
        self.lines = enabled and not sys.stderr.isatty()
        if enabled and not self.lines:
            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=leave)
        self.every = max((total - initial) / 10, 1e-9)  # a tenth of the loop
        self.start, self.start_done = time.perf_counter(), initial
        self.last_line, self.last_done = self.start, initial
        self.lines_printed = 0

    def update(self, values: Mapping[str, float] | None = None, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if values:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
            return
        if self.lines:
            self._maybe_line(self.done, values or {}, final=self.done >= self.total)

    def within(self, fraction: float, values: Mapping[str, float] | None = None) -> None:
        """Progress inside the step under way (``fraction`` of it done, 0..1); lines only, a bar ignores it."""
        if self.lines and fraction < 1:  # the step's end is the next update's line
            self._maybe_line(self.done + max(fraction, 0.0), values or {}, final=False)

    def _maybe_line(self, position: float, values: Mapping[str, float], final: bool) -> None:
        now = time.perf_counter()
        if now - self.start < self.QUIET_S:
            return
        first = self.lines_printed == 0 and now - self.start >= self.FIRST_LINE_S
        due = position - self.last_done >= self.every or now - self.last_line >= self.LINE_EVERY_S
        if first or due or final:
            self._line(now, position, values)

    def _line(self, now: float, position: float, values: Mapping[str, float]) -> None:
        per = (now - self.start) / max(position - self.start_done, 1e-9)
        count = f"{position:.2f}".rstrip("0").rstrip(".")
        parts = [f"{self.desc}: {count}/{self.total} ({int(100 * position / max(1, self.total))} %)"]
        parts += [f"{k} {v:.4g}" for k, v in values.items()]
        parts.append(f"{per:.3g} s/it")
        if position < self.total:
            eta = _duration(per * (self.total - position)) if position - self.start_done >= 0.01 else "not yet known"
            parts.append(f"ETA {eta}")
        print(", ".join(parts), file=sys.stderr, flush=True)
        self.last_line, self.last_done = now, position
        self.lines_printed += 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
