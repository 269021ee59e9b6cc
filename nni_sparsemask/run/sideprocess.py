"""A second process for the demo's retraining runs that do not wait for the search (the dense FDN, the baselines).

``sparsemask demo --split-cpu``: this process searches and retrains the searched decoder while a second one
retrains the others, each with half of PyTorch's threads. Every run keeps its own run directory, so ``--resume``
works as before; what the second process prints goes to a log file in the demo's directory. On the 2-core
development VM it took the demo from cold caches from 24:01 to 20:55, and the C_dec 96 demo from 33:39 to
31:48 (``benchmarks/RESULTS.md``): the training scales well enough to a second thread that sharing the cores
gains little there. On a machine with more cores than a small network uses it may gain more (not measured).

The comparison's trial runs its search in a process of its own too (``comparison.trial``), but waits for it and
forwards its log lines; this one runs beside the caller and writes its output to a file. Both end with the process
that started them, however it ends (:func:`exit_with_parent`): a demo killed with SIGKILL leaves no retraining
behind.

:func:`cpu_split` says whether (and how) to split; :class:`SideProcess` starts, waits for and stops the process.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

__all__ = ["cpu_split", "SideProcess", "exit_with_parent"]


def cpu_split(threads: int, accelerator: str, cuda: bool) -> Optional[tuple[int, int]]:
    """``(threads here, threads in the second process)`` when the demo should split the CPU, else None: only when
    training runs on the CPU (``accelerator`` "cpu", or "auto" without CUDA) with at least 2 PyTorch threads."""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not cuda)
    if not on_cpu or threads < 2:
        return None
    return threads // 2, threads - threads // 2


def exit_with_parent(parent_pid: int, poll_seconds: float = 2.0, code: int = 3) -> threading.Thread:
    """In a started process: a daemon thread that ends this process (``os._exit(code)``, no clean-up) within
    ``poll_seconds`` of its parent ``parent_pid`` going away, however the parent ended (SIGKILL included: an
    orphan's parent becomes another process). A terminate() from the parent stays the normal way to stop it."""
    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent_pid:
                os._exit(code)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def _work(jobs: list[tuple[str, dict[str, Any]]], threads: int, log_path: str, conn: Any, parent_pid: int,
          poll_seconds: float) -> None:
    """The second process: ``run_retrain(**kwargs)`` for each ``(name, kwargs)`` with ``threads`` PyTorch threads,
    everything printed appended to ``log_path``; sends ``{"seconds": {name: s}}`` or ``{"error": text}``; ends
    when ``parent_pid`` does."""
    exit_with_parent(parent_pid, poll_seconds)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    seconds: dict[str, float] = {}
    try:
        from nni_sparsemask import malloc

        malloc.tune()  # a spawned interpreter starts with glibc's settings; it runs as the command's own process does
        import torch

        torch.set_num_threads(threads)
        from nni_sparsemask.run.steps import run_retrain

        for name, kwargs in jobs:
            t0 = time.time()
            print(f"\n[demo] --- retrain {name} (second process, {threads} threads) ---", flush=True)
            run_retrain(**kwargs)
            seconds[name] = round(time.time() - t0, 1)
        conn.send({"seconds": seconds})
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises it there
        traceback.print_exc()
        conn.send({"error": f"{type(err).__name__}: {err}", "seconds": seconds})
        sys.exit(1)
    finally:
        conn.close()


class SideProcess:
    """``run_retrain(**kwargs)`` for each ``(name, kwargs)`` of ``jobs`` in a second process with ``threads``
    threads (``progress`` and ``log`` are set here), its output appended to ``log_path``.

    ``start()`` it, do the other work, then ``finish()`` (waits; returns ``{name: seconds}``; a failure there is a
    ``RuntimeError`` naming the log). ``stop()`` ends it early (the parent failed or was interrupted): its runs
    resume with ``--resume`` from their last checkpoints. If this process dies without stopping it (SIGKILL), the
    second process ends within ``poll_seconds``."""

    def __init__(self, jobs: list[tuple[str, dict[str, Any]]], threads: int, log_path: str | Path,
                 poll_seconds: float = 2.0) -> None:
        self.names = [name for name, _ in jobs]
        self.log_path = Path(log_path)
        jobs = [(name, dict(kwargs, progress=False, log=print)) for name, kwargs in jobs]
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked OpenMP or Lightning state
        self._recv, send = ctx.Pipe(duplex=False)
        self._send = send
        self._process = ctx.Process(target=_work, args=(jobs, threads, str(self.log_path), send, os.getpid(),
                                                          poll_seconds),
                                    name="sparsemask-demo-retrain")

    def start(self) -> "SideProcess":
        self._process.start()
        self._send.close()  # the child holds the only sending end: its exit ends recv()
        return self

    def done(self) -> bool:
        """Whether the process has ended (then its threads are free again)."""
        return not self._process.is_alive()

    def finish(self, log: Callable[[str], None] = print) -> dict[str, float]:
        """Wait for the process; ``{name: seconds}`` of its runs, or a ``RuntimeError`` that names its log."""
        if self._process.is_alive():
            log(f"[demo] waiting for the second process ({', '.join(self.names)}; log: {self.log_path})")
        message: dict[str, Any] = {}
        try:
            message = self._recv.recv()
        except EOFError:  # it died without a word (killed, out of memory)
            pass
        self._process.join()
        code = self._process.exitcode
        if code != 0 or "error" in message:
            why = message.get("error") or f"exit code {code}"
            raise RuntimeError(f"retraining {', '.join(self.names)} in the demo's second process failed ({why}); "
                               f"its output is in {self.log_path}; fix the cause and run the demo again with "
                               f"--resume (finished runs are kept)")
        return message["seconds"]

    def stop(self) -> None:
        """End the process if it still runs (its runs stay resumable)."""
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=30)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
