import subprocess
import sys
from pathlib import Path

import pytest

from nni_sparsemask.measure.cpuload import busy_cores, other_busy_cores, parse_own_ticks, parse_proc_stat


def test_proc_stat_counts_every_state_but_idle_and_iowait():
    text = "cpu  100 5 50 1000 20 3 2 1 7 0\ncpu0 50 2 25 500 10 1 1 0 0 0\nintr 1\n"
    busy, total = parse_proc_stat(text)
    assert total == 100 + 5 + 50 + 1000 + 20 + 3 + 2 + 1  # guest (7) is already inside user: not added twice
    assert busy == total - 1000 - 20
    with pytest.raises(ValueError, match="not a /proc/stat"):
        parse_proc_stat("intr 1 2 3\n")


def test_own_ticks_are_read_after_the_name_whatever_it_holds():
    fields = ["S", "1", "1", "1", "0", "-1", "4194560", "10", "0", "0", "0", "123", "45", "0", "0"]
    assert parse_own_ticks("4242 (odd) name (x)) " + " ".join(fields)) == 123 + 45


def test_this_process_is_not_counted():
    # 2 cores over 100 ticks each = 200 ticks; 150 busy of which 100 were ours -> 50 ticks = 0.5 cores by others
    assert busy_cores((0, 150), (0, 200), (0, 100), cores=2) == pytest.approx(0.5)
    assert busy_cores((0, 100), (0, 200), (0, 100), cores=2) == 0.0  # only us: nobody else
    assert busy_cores((0, 90), (0, 200), (0, 100), cores=2) == 0.0  # sampling skew never goes negative
    assert busy_cores((5, 5), (7, 7), (0, 0), cores=2) == 0.0  # no time passed


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux's /proc")
def test_a_spinning_process_is_seen():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy, how = other_busy_cores(window=1.0)
    finally:
        spinner.kill()
        spinner.wait()
    assert how.startswith("cores busy in other processes") and busy >= 0.5
