"""How many CPU cores *other* processes keep busy right now, for the warning before a latency table is timed.

The 1-minute load average is the obvious number and the wrong one: it lags by a minute and counts this process.
Right after a demo's pre-training (2 threads for minutes) it still reads about 2 on an otherwise idle 2-core
machine, and a check on it warned of contention that was not there. :func:`other_busy_cores` samples the
kernel's CPU counters over a short window instead, and subtracts what this process used in that window:

    others = (busy_after - busy_before) / ticks_per_core  -  (own_after - own_before) / ticks_per_core

over the window (``/proc/stat``'s jiffies; ``busy`` is every state but idle and iowait). Where ``/proc`` is
missing (macOS, Windows) it falls back to the load average, which is then an upper bound.
"""
from __future__ import annotations

import os
import time
from typing import Optional, Sequence


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def parse_proc_stat(text: str) -> tuple[int, int]:
    """``(busy, total)`` jiffies of all cores from ``/proc/stat``'s first line (``cpu  user nice system idle iowait
    irq softirq steal ...``); guest time is already inside user and nice, so only the first eight fields count."""
    line = text.splitlines()[0].split()
    if line[0] != "cpu" or len(line) < 5:
        raise ValueError(f"not a /proc/stat aggregate line: {text.splitlines()[0]!r}")
    fields = [int(v) for v in line[1:9]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def parse_own_ticks(text: str) -> int:
    """utime + stime of a process (all its threads) from ``/proc/<pid>/stat``; the name field may hold spaces and
    parentheses, so the fields are counted after its last ``)``."""
    rest = text[text.rindex(")") + 2:].split()
    return int(rest[11]) + int(rest[12])  # fields 14 and 15 of proc(5), counted from field 3


def busy_cores(busy: Sequence[int], total: Sequence[int], own: Sequence[int], cores: int) -> float:
    """Cores kept busy by other processes between two samples: ``(d busy - d own) / d total * cores``, never
    below 0 (the counters are sampled a few microseconds apart)."""
    d_total = total[1] - total[0]
    if d_total <= 0:
        return 0.0
    return max(0.0, (busy[1] - busy[0] - (own[1] - own[0])) / d_total * cores)


def other_busy_cores(window: float = 0.5) -> tuple[float, str]:
    """``(cores, how)``: the cores other processes used over the next ``window`` seconds (this process sleeps
    through it), and ``how`` it was measured, for the warning's text."""
    cores = os.cpu_count() or 1
    before, own_before = _read("/proc/stat"), _read("/proc/self/stat")
    if before is None or own_before is None:
        try:
            return float(os.getloadavg()[0]), "load average"
        except OSError:
            return 0.0, "unavailable"
    time.sleep(window)
    after, own_after = _read("/proc/stat"), _read("/proc/self/stat")
    if after is None or own_after is None:
        return 0.0, "unavailable"
    b0, t0 = parse_proc_stat(before)
    b1, t1 = parse_proc_stat(after)
    return busy_cores((b0, b1), (t0, t1), (parse_own_ticks(own_before), parse_own_ticks(own_after)), cores), \
        f"cores busy in other processes over {window:g} s"
