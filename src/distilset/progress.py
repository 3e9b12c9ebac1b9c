"""Progress of long loops: a tqdm bar on a terminal, plain log lines anywhere else (a pipe, a log file, CI).

``Progress(total, desc, enabled)`` draws tqdm's bar when stderr is a terminal; otherwise it prints one line
to stderr every tenth of the loop or every 30 seconds, whichever comes first, and at the end:

    distill dd: 120/400 (30 %), loss 0.412, 0.21 s/it, ETA 59 s

so a run under ``nohup`` or in a batch job still shows where it is and when it will end.
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

    def __init__(self, total: int, desc: str, enabled: bool = True, initial: int = 0, leave: bool = True):
        self.total, self.desc, self.done = total, desc, initial
        self.bar = None
        self.lines = enabled and not sys.stderr.isatty()
        if enabled and not self.lines:
            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=leave)
        self.every = max(1, (total - initial) // 10)
        self.start, self.start_done = time.perf_counter(), initial
        self.last_line, self.last_done = self.start, initial

    def update(self, values: Mapping[str, float] | None = None, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if values:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
            return
        if not self.lines:
            return
        now = time.perf_counter()
        due = self.done - self.last_done >= self.every or now - self.last_line >= self.LINE_EVERY_S
        if due or self.done >= self.total:
            self._line(now, values or {})

    def _line(self, now: float, values: Mapping[str, float]) -> None:
        per = (now - self.start) / max(1, self.done - self.start_done)
        parts = [f"{self.desc}: {self.done}/{self.total} ({100 * self.done // max(1, self.total)} %)"]
        parts += [f"{k} {v:.4g}" for k, v in values.items()]
        parts.append(f"{per:.3g} s/it")
        if self.done < self.total:
            parts.append(f"ETA {_duration(per * (self.total - self.done))}")
        print(", ".join(parts), file=sys.stderr, flush=True)
        self.last_line, self.last_done = now, self.done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
