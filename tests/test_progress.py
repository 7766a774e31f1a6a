"""Progress without a terminal: log lines at a bounded rate with done/total, elapsed and ETA."""
import logging
import os
import re
import time

import forked
from polyprune import progress

LINE = re.compile(r"(?P<desc>.+): (?P<done>\d+)/(?P<total>\d+) \((?P<pct>\d+)%\) · elapsed \S+ · ETA \S+")


def test_progress_line_hand_computed():
    # 3 of 12 done in 30 s → 10 s each → 9 left × 10 s = 90 s
    assert progress.progress_line("prune layers", 3, 12, 30.0) == \
        "prune layers: 3/12 (25%) · elapsed 30s · ETA 1m30s"
    assert progress.progress_line("x", 0, 5, 1.0).endswith("ETA estimating")
    assert progress.fmt_duration(3725) == "1h02m05s"


def test_log_lines_rate_bounded_and_final(monkeypatch, caplog):
    monkeypatch.setenv("POLYPRUNE_PROGRESS", "1")
    monkeypatch.setenv("POLYPRUNE_PROGRESS_INTERVAL", "3600")
    monkeypatch.setattr(progress, "interactive", lambda: False)
    with caplog.at_level(logging.INFO, logger="polyprune.progress"):
        assert list(progress.track(range(50), "fast")) == list(range(50))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("fast: 50/50 (100%)")  # a long interval: only the final line


def test_heartbeat_while_one_item_runs_long(monkeypatch, caplog):
    monkeypatch.setenv("POLYPRUNE_PROGRESS", "1")
    monkeypatch.setenv("POLYPRUNE_PROGRESS_INTERVAL", "0.05")
    monkeypatch.setattr(progress, "interactive", lambda: False)
    with caplog.at_level(logging.INFO, logger="polyprune.progress"):
        for _ in progress.track(range(2), "slow"):
            time.sleep(0.4)  # one item far longer than the interval: never silent
    done = [int(LINE.match(r.getMessage())["done"]) for r in caplog.records]
    assert len(done) >= 4 and done == sorted(done) and done[-1] == 2 and done[0] == 0


def test_disabled_is_silent(monkeypatch, caplog):
    monkeypatch.setenv("POLYPRUNE_PROGRESS", "0")
    with caplog.at_level(logging.INFO, logger="polyprune.progress"):
        assert list(progress.track([1, 2], "x")) == [1, 2]
    assert not caplog.records


def test_prune_to_a_log_file_prints_layer_progress(tiny_dir, tmp_path):
    """`polyprune prune … > log 2>&1`: progress lines (interval ~0), the final 100 % line, and the
    result line after them on a line of its own."""
    cal = tmp_path / "cal.txt"
    cal.write_text("The committee met on Tuesday to discuss the budget. " * 80, encoding="utf-8")
    env = {**os.environ, "POLYPRUNE_PROGRESS": "1", "POLYPRUNE_PROGRESS_INTERVAL": "0.001"}
    r = forked.run(["-m", "polyprune", "prune", "--model", str(tiny_dir("llama")), "--method", "wanda",
                    "--calibration-file", str(cal), "--nsamples", "2", "--seqlen", "16", "--out", str(tmp_path / "run")],
                   env=env, merge=True)  # stdout and stderr into one file, as `> log 2>&1`
    text = r.stdout
    assert r.returncode == 0, text
    prog = [LINE.search(x) for x in text.splitlines()]
    prog = [m for m in prog if m]
    assert prog, text
    total = int(prog[-1]["total"])
    assert total >= 2 and int(prog[-1]["done"]) == total and prog[-1]["pct"] == "100"
    done = [int(m["done"]) for m in prog if m["total"] == str(total)]
    assert done == sorted(done)
    last = text.strip().splitlines()[-1]
    assert last.startswith(str(tmp_path / "run")) and "achieved sparsity" in last
    assert "\x1b[" not in text  # no terminal control codes in a log file
