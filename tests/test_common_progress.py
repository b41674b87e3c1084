"""long_ctx.common.progress: a tqdm bar on a terminal, plain lines at most every N seconds elsewhere."""
from __future__ import annotations

import io

import pytest
from tqdm import tqdm

from long_ctx.common import progress
from long_ctx.common.progress import LineProgress, progress_bar


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(progress.time, "monotonic", c)
    return c


def test_line_progress_prints_at_most_every_interval_and_a_last_line(clock):
    out = io.StringIO()
    bar = progress_bar(total=1000, desc="stage 9", unit="rec", file=out, log_interval_s=30)
    assert isinstance(bar, LineProgress)
    for _ in range(1000):  # updates for 100 s -> a line at 30, 60 and 90 s, plus the last one
        clock.t += 0.125 if bar.n < 800 else 0  # (exact in binary) the last 200 arrive at once
        bar.update(1)
        bar.set_postfix(records=bar.n, refresh=False)
    bar.close()
    bar.close()  # a second close adds nothing
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 4 and all(line.startswith("stage 9:") for line in lines)
    assert "240/1000" in lines[0] and "480/1000" in lines[1] and "720/1000" in lines[2]
    assert "1000/1000" in lines[3] and "100%" in lines[3] and "records=1000" in lines[3]


def test_unknown_total_and_no_final_line_on_an_error(clock):
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        with progress_bar(desc="stage 0", unit="B", unit_scale=True, file=out) as bar:
            clock.t += 31
            bar.update(5_000_000)
            raise KeyboardInterrupt
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "5.00MB" in lines[0]  # the interval line only: the error has its own line
    out = io.StringIO()
    with progress_bar(desc="stage 0", file=out) as bar:
        bar.update(3)
    assert out.getvalue().count("\n") == 1 and "3it" in out.getvalue()


def test_a_terminal_gets_tqdm_and_disable_is_silent():
    tty = Tty()
    bar = progress_bar(total=10, file=tty)
    assert isinstance(bar, tqdm)
    bar.update(10)
    bar.close()
    assert "\r" in tty.getvalue()
    quiet = io.StringIO()
    bar = progress_bar(total=10, disable=True, file=quiet)
    bar.update(10)
    bar.close()
    assert quiet.getvalue() == ""
