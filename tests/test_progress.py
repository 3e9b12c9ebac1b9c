"""Progress lines in a log (stderr not a terminal): none for a loop under three seconds, the first within 5 s, then one
every tenth or 30 s, also from inside a long step (``within``, as ``evaluate`` reports a net's training)."""

from __future__ import annotations

import pytest

from distilset import progress as progress_mod
from distilset.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(progress_mod.time, "perf_counter", c)
    monkeypatch.setattr(progress_mod.sys.stderr, "isatty", lambda: False, raising=False)
    return c


def lines(capsys: pytest.CaptureFixture) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_a_loop_under_three_seconds_prints_nothing(clock: Clock, capsys: pytest.CaptureFixture) -> None:
    bar = Progress(100, "quick")
    for _ in range(100):
        clock.now += 0.029
        bar.update()
    bar.close()
    assert lines(capsys) == []


def test_a_long_loop_prints_tenths_and_the_end(clock: Clock, capsys: pytest.CaptureFixture) -> None:
    bar = Progress(100, "distill x")
    for _ in range(100):
        clock.now += 0.5
        bar.update({"loss": 0.5})
    out = lines(capsys)
    assert out[0].startswith("distill x: 10/100 (10 %), loss 0.5, 0.5 s/it, ETA 45 s")
    assert len(out) == 10 and out[-1].startswith("distill x: 100/100 (100 %)") and "ETA" not in out[-1]


def test_inside_a_long_step_a_line_comes_within_5_s_then_every_30_s(
    clock: Clock, capsys: pytest.CaptureFixture
) -> None:
    bar = Progress(5, "evaluate convnet (recipe), nets")
    for _net in range(2):
        for step in range(1, 1001):  # one net: 1000 steps of 0.1 s, 100 s in all
            clock.now += 0.1
            bar.within(step / 1000)
        bar.update({"acc": 0.9})
    out = lines(capsys)
    assert out[0].startswith("evaluate convnet (recipe), nets: 0.05/5 (1 %)") and "ETA 8 min 15 s" in out[0]
    # 200 s in all: the first line at 5 s, the tenths (each half net) and the 30-second lines in between
    assert 6 <= len(out) <= 12
    positions = [float(line.split(": ")[1].split("/")[0]) for line in out]
    assert positions == sorted(positions) and positions[-1] >= 1.8
