"""The commands' allocator: glibc's malloc tuned (no mmap per large block, no trimming), or left as it is."""
import platform
import subprocess
import sys

import pytest

# a 16 MiB block: above glibc's default mmap threshold (128 KiB), below the tuned one (32 MiB); mallinfo2().hblks
# counts the blocks that got their own mmap
PROBE = """
import ctypes, sys
from nni_sparsemask import malloc
print(malloc.tune())
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2().hblks
block = libc.malloc(16 << 20)
print("mmapped", libc.mallinfo2().hblks - before)
"""

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def _probe(mode):
    env = {"NNI_SPARSEMASK_MALLOC": mode, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


@glibc
def test_tuned_malloc_serves_a_16_mib_block_from_the_heap():
    state, mmapped = _probe("tuned")
    assert state.startswith("tuned (glibc mallopt: mmap threshold 32 MiB, trim threshold 1 GiB)")
    assert mmapped == "mmapped 0"


@glibc
def test_default_leaves_glibc_alone():
    state, mmapped = _probe("default")
    assert state == "default (NNI_SPARSEMASK_MALLOC=default)"
    assert mmapped == "mmapped 1"   # glibc's own threshold: the block got its own mapping


def test_an_unknown_setting_is_refused_by_the_command(monkeypatch, capsys):
    from nni_sparsemask.cli import main

    monkeypatch.setenv("NNI_SPARSEMASK_MALLOC", "jemalloc")
    assert main(["convert", "missing.npy", "--out", "x.json"]) == 2
    assert "NNI_SPARSEMASK_MALLOC must be 'tuned' or 'default', got 'jemalloc'" in capsys.readouterr().err
