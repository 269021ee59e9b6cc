"""``sparsemask compare CONFIG``: the strategy comparison as an NNI experiment, launched safely, then reported.

1. Checks the config before anything starts (:mod:`.plan`): NNI's own config classes
   (``nni.experiment.config.ExperimentConfig``: fields, types, training service), then the comparison's grid
   (every entry a known strategy or decoder with valid hyper-parameters, see :mod:`.grid`) and the trial settings
   of the ``nni_sparsemask.comparison.trial`` command (:mod:`.settings`).
2. Starts the experiment (``--resume ID``: continues a stopped one; GridSearch skips the finished entries and
   every trial reuses a finished run directory). On the ``local`` training service NNI's manager is kept on
   127.0.0.1 (:mod:`.manager`: its REST API and web UI have no authentication). Cluster training services need
   the manager reachable from the workers: only with ``--expose``, unless the workers reach it on loopback
   (``remote`` machines that are all this machine, or a loopback ``nniManagerIp`` with SSH reverse tunnels).
3. Prints the web UI address, follows the trials until the grid is done, writes the report (``write_report``:
   Table 1, Fig. 4, Fig. 5) into ``--results`` (default ``reports/<experiment id>``) and stops the manager by
   its own process id. Ctrl-C (or SIGTERM) stops it too; ``--resume ID`` carries on later.
4. ``--stop ID`` stops what a ``compare`` recorded (its own process, the manager and the trials, by pid and start
   time: :func:`.manager.stop_recorded`), also after that ``compare`` was killed.

``--dry-run CONFIG`` does step 1 only, lists every trial's command and says, one line each, what the trials
need that is not here (data roots, backbone weights files, CUDA devices; :func:`.plan.dry_run`): exit status 2 if
anything is missing, 0 otherwise; nothing is launched, nothing written.

Wire it into the ``sparsemask`` command with :func:`register_cli`; ``python -m nni_sparsemask.comparison.compare`` runs it
alone.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from nni_sparsemask.comparison.manager import (manifest_entry, nni_error_line, record_processes, start_experiment,
                                               stop_experiment, stop_recorded)
# the config checks live in .plan; their names stay importable from here
from nni_sparsemask.comparison.plan import (TRIAL_MODULE, ComparisonPlan, dry_run, load_config,  # noqa: F401
                                            plan_comparison, validate_config)

__all__ = ["ComparisonPlan", "load_config", "plan_comparison", "run_compare", "run_dry", "stop_compare",
           "register_cli", "main"]

FINISHED_STATUSES = ("DONE", "STOPPED", "ERROR")
#: GridSearch ends with "no more trial" (NNI sets DONE only at maxTrialNumber): done once no trial is active
NO_MORE_TRIAL_STATUSES = ("NO_MORE_TRIAL", "TUNER_NO_MORE_TRIAL")
ACTIVE_TRIAL_STATUSES = ("WAITING", "RUNNING", "UNKNOWN")
Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------------ run
def _statistics(experiment: Any) -> dict[str, int]:
    return {s["trialJobStatus"]: int(s["trialJobNumber"]) for s in experiment.get_job_statistics()}


def _wait(experiment: Any, total: Optional[int], poll: float, log: Log) -> str:
    last = None
    failures = 0
    while True:
        try:
            status = experiment.get_status()
            counts = _statistics(experiment)
            failures = 0
            record_processes(experiment)  # the trials started since the last poll (what --stop ends)
        except Exception as err:  # the manager is gone or not answering
            failures += 1
            if failures >= 3:
                logdir = Path(str(experiment.config.experiment_working_directory)).expanduser() / experiment.id / "log"
                raise RuntimeError(f"NNI's manager stopped answering ({nni_error_line(err)}); see {logdir}") from None
            time.sleep(poll)
            continue
        grid = f" of {total}" if total else ""
        line = f"{status}: " + (", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "no trials yet")
        if line != last:
            done = sum(n for s, n in counts.items() if s in ("SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED",
                                                              "EARLY_STOPPED"))
            log(f"[compare] {time.strftime('%H:%M:%S')} {line} ({done}{grid} trials finished)")
            last = line
        if status in FINISHED_STATUSES:
            return status
        if status in NO_MORE_TRIAL_STATUSES and not any(counts.get(s) for s in ACTIVE_TRIAL_STATUSES):
            return "DONE"
        time.sleep(poll)


def _failed_trials(experiment: Any) -> list[str]:
    """One line (trial id, status, parameters, log) per trial that failed and whose entry no other trial finished
    (a failure retried successfully after ``--resume`` is not reported)."""
    jobs = []
    with contextlib.suppress(Exception):
        for job in experiment.list_trial_jobs():
            params = job.hyperParameters[0].parameters if job.hyperParameters else {}
            jobs.append((job, json.dumps(params, sort_keys=True)))
    succeeded = {params for job, params in jobs if job.status == "SUCCEEDED"}
    lines = []
    for job, params in jobs:
        if job.status in ("FAILED", "SYS_CANCELED", "USER_CANCELED", "EARLY_STOPPED") and params not in succeeded:
            log_dir = str(job.logPath or "").replace("file://localhost:", "")
            lines.append(f"{job.trialJobId} {job.status.lower()} {params}: {_last_error(Path(log_dir))}"
                         f"(log: {log_dir})")
    return lines


def _last_error(log_dir: Path) -> str:
    """The last line of a local trial's stderr (its error), or ''."""
    with contextlib.suppress(OSError):
        lines = [line.strip() for line in (log_dir / "trial.stderr").read_text(errors="replace").splitlines()]
        lines = [line for line in lines if line]
        if lines:
            return lines[-1][:300] + " "
    return ""


class _ExperimentSource:
    """What ``write_report`` reads from the running experiment (no second manager is started to view it).

    One trial per run directory: an entry NNI handed out twice (a trial interrupted by a stop is resumed, and
    GridSearch, which never saw its result, hands it out again; the second trial reuses the result) would
    otherwise count twice in Table 1.
    """

    def __init__(self, experiment: Any) -> None:
        self._experiment = experiment
        self.id = experiment.id

    def export_data(self) -> list[Any]:
        seen, trials = set(), []
        for trial in self._experiment.export_data():
            run_dir = _run_dir_of(getattr(trial, "value", None))
            if run_dir is not None:
                if run_dir in seen:
                    continue
                seen.add(run_dir)
            trials.append(trial)
        return trials

    def __str__(self) -> str:
        return f"NNI experiment {self.id}"


def _run_dir_of(value: Any) -> Optional[str]:
    for _ in range(2):  # NNI may hand the final result back JSON-encoded, even twice
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return None
    run_dir = value.get("run_dir") if isinstance(value, dict) else None
    return str(run_dir) if run_dir else None


def _resume_plan(experiment_id: str, config_path: Optional[str]) -> ComparisonPlan:
    from nni.experiment import launcher

    entry = manifest_entry(experiment_id)
    if entry is None:
        raise ValueError(f"no NNI experiment {experiment_id!r} here (see `nnictl experiment list --all`)")
    if entry.get("status") != "STOPPED":
        raise ValueError(f"experiment {experiment_id} is still running (manager pid {entry.get('pid')}, port "
                         f"{entry.get('port')}): stop it first (`nnictl stop {experiment_id}`)")
    stored = launcher.get_stopped_experiment_config(experiment_id, entry.get("logDir") or None)
    if config_path is not None:
        given = load_config(config_path)
        old, new = validate_config(stored, experiment_id).json(), validate_config(given, config_path).json()
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            raise ValueError(f"{config_path} differs from the config experiment {experiment_id} was created with "
                             f"(in {', '.join(diff)}); resume without CONFIG, or start a new experiment")
    return plan_comparison(stored, f"experiment {experiment_id}")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_compare(config: Optional[str | Path] = None, *, resume: Optional[str] = None, port: int = 8080,
                results: Optional[str | Path] = None, expose: bool = False, poll: float = 5.0,
                retime: bool = False, log: Log = print) -> int:
    """The ``sparsemask compare`` command; returns its exit status (0 done, 1 some trial failed or the experiment
    ended in error, 130 interrupted: the experiment is stopped and ``--resume ID`` continues it).

    ``retime``: once the trials are done, time every finished network side by side against the dense FDN
    (:mod:`.retime`, into the run directories' root) before the report, which then plots the paired ratios; only
    for the local training service, whose run directories are on this machine."""
    if config is None and resume is None:
        raise ValueError("give the experiment CONFIG (e.g. experiments/comparison-quick.yml), or --resume ID")
    plan = _resume_plan(resume, None if config is None else str(config)) if resume else \
        plan_comparison(load_config(config), str(config))
    if retime and plan.results_root is None:
        raise ValueError(f"--retime needs the run directories on this machine (the local training service with the "
                         f"trials' --results); this is a {plan.platform} experiment: run `sparsemask retime ROOT` "
                         "where its run directories are, then `sparsemask report`")
    for note in plan.notes:
        log(f"[compare] note: {note}")
    if results is not None:
        report_md = Path(results) / "report.md"
        if report_md.exists() and not resume:
            raise FileExistsError(f"{report_md} exists; choose another --results")
    if plan.entries is not None:
        where = f" -> run directories in {plan.results_root}" if plan.results_root else ""
        log(f"[compare] grid: {len(plan.entries)} entries ({', '.join(sorted({e.method for e in plan.entries}))})"
            f"{where}")
    experiment = None
    with _sigterm_as_interrupt():
        try:
            experiment = start_experiment(plan, port, resume=resume, expose=expose, log=log)
            record_processes(experiment, compare_pid=os.getpid())
            where = "every interface, see the warning above" if expose else \
                f"loopback only; from another machine: ssh -N -L {port}:127.0.0.1:{port} {_user_host()}"
            log(f"[compare] experiment {experiment.id} {'resumed' if resume else 'started'}: web UI "
                f"http://127.0.0.1:{port} ({where})")
            status = _wait(experiment, len(plan.entries) if plan.entries is not None else None, poll, log)
            report_dir = Path(results) if results is not None else Path("reports") / experiment.id
            paired = _retime(plan.results_root, log) if retime else None
            _write_report(experiment, report_dir, overwrite=bool(resume), log=log, paired_fps=paired)
            failed = _failed_trials(experiment)
            for line in failed:
                log(f"[compare] failed trial {line}")
        except KeyboardInterrupt:
            if experiment is not None:
                log(f"\n[compare] interrupted: stopping experiment {experiment.id}")
                stop_experiment(experiment, log=log)
                log(f"[compare] stopped; continue it with: sparsemask compare --resume {experiment.id}")
            return 130
        finally:
            if experiment is not None and experiment.port is not None:
                stop_experiment(experiment, log=log)
    log(f"[compare] experiment {experiment.id}: {status.lower()}; manager stopped"
        + (f"; {len(failed)} trial(s) failed, see above (sparsemask compare --resume {experiment.id} runs them "
           "again)" if failed else ""))
    return 0 if status == "DONE" and not failed else 1


def run_dry(config: str | Path, log: Log = print, warn: Optional[Log] = None) -> int:
    """``sparsemask compare --dry-run CONFIG``: the checks of a launch, every trial's command (``log``), one line
    per missing piece (``warn``, default stderr); returns 2 if anything is missing, else 0. Launches nothing and
    writes nothing."""
    if warn is None:
        warn = lambda line: print(line, file=sys.stderr)  # noqa: E731
    result = dry_run(load_config(config), str(config))
    plan = result.plan
    concurrency = getattr(plan.config, "trial_concurrency", None)
    log(f"[dry-run] {config}: {plan.platform} training service, {len(result.commands)} trials"
        + (f", {concurrency} at a time" if concurrency else "")
        + (f"; each command runs in {result.code_directory}" if plan.platform == "local" else
           f"; each command runs in the copy of {result.code_directory} NNI uploads"))
    for i, (_, command) in enumerate(result.commands, 1):
        log(f"trial {i}/{len(result.commands)}: {command}")
    for note in result.notes:
        log(f"[dry-run] note: {note}")
    for line in result.missing:
        warn(f"sparsemask compare: missing: {line}")
    if result.missing:
        log(f"[dry-run] {len(result.missing)} missing piece(s), see above; nothing was launched")
        return 2
    log("[dry-run] everything the trials need is here; nothing was launched")
    return 0


def stop_compare(experiment_id: str, experiments_dir: Optional[str | Path] = None, log: Log = print) -> int:
    """``sparsemask compare --stop ID``: stop the compare process, NNI's manager and the trials of experiment
    ``experiment_id`` that a ``compare`` recorded (also after it was killed); returns the exit status (0)."""
    running = stop_recorded(experiment_id, experiments_dir, log=log)
    log(f"[compare] experiment {experiment_id} stopped" if running else
        f"[compare] nothing of experiment {experiment_id} was still running")
    log(f"[compare] continue it with: sparsemask compare --resume {experiment_id}")
    return 0


def _retime(root: Path, log: Log) -> Optional[Path]:
    """Paired FPS ratios of the finished runs under ``root`` (replacing an earlier file of this comparison: a
    resumed experiment is timed again as a whole); None, with a line saying why, when they cannot be timed."""
    from nni_sparsemask.comparison.retime import PAIRED_FPS_FILE, retime_runs

    try:
        retime_runs(root, root / PAIRED_FPS_FILE, overwrite=True, log=log)
    except (ValueError, FileNotFoundError) as err:
        log(f"[compare] no paired FPS: {err}")
        return None
    return root / PAIRED_FPS_FILE


def _write_report(experiment: Any, report_dir: Path, overwrite: bool, log: Log,
                  paired_fps: Optional[Path] = None) -> None:
    from nni_sparsemask.analysis import write_report

    try:
        path = write_report(_ExperimentSource(experiment), report_dir, overwrite=overwrite, paired_fps=paired_fps)
    except (ValueError, FileExistsError) as err:
        log(f"[compare] no report written: {err}")
        return
    log(f"[compare] report: {path}")


def _user_host() -> str:
    with contextlib.suppress(Exception):
        import getpass
        return f"{getpass.getuser()}@{socket.gethostname()}"
    return "user@this-host"


# ------------------------------------------------------------------------------------------------ command line
DESCRIPTION = ("Check the experiment config, start it (NNI's manager on 127.0.0.1 for the local training service), "
               "follow the trials, write the report, stop the manager.")


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``sparsemask compare`` (and of ``python -m nni_sparsemask.comparison.compare``)."""
    p.add_argument("config", nargs="?", default=None,
                   help="nnictl experiment config, e.g. experiments/comparison-quick.yml (optional with --resume)")
    p.add_argument("--resume", metavar="EXPERIMENT_ID", default=None,
                   help="continue a stopped experiment: finished grid entries are not run again")
    p.add_argument("--stop", metavar="EXPERIMENT_ID", default=None,
                   help="stop an experiment a compare started (its manager and trials, by the pids it recorded), "
                        "also after that compare was killed")
    p.add_argument("--dry-run", action="store_true",
                   help="check CONFIG and list every trial's command and what the trials need that is missing "
                        "(data roots, weights files, CUDA devices; exit status 2 if anything is); launch nothing")
    p.add_argument("--port", type=int, default=8080, help="NNI manager / web UI port (default 8080)")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="where the report goes (report.md, results.csv, figures; default reports/<experiment id>)")
    p.add_argument("--expose", action="store_true",
                   help="let the manager listen on every interface (needed by remote/kubeflow/frameworkcontroller "
                        "workers; see experiments/README.md)")
    p.add_argument("--retime", action="store_true",
                   help="after the trials, time every finished network side by side against the dense FDN (sparsemask "
                        "retime) so that Fig. 4's speed axis is paired; local training service only")
    p.add_argument("--poll", type=float, default=5.0, help=argparse.SUPPRESS)
    p.set_defaults(func=_command)
    return p


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``compare`` subcommand to the ``sparsemask`` parser's ``subparsers`` (its ``func`` runs it)."""
    return add_arguments(subparsers.add_parser(
        "compare", help="every strategy side by side as an NNI experiment (manager on 127.0.0.1), then the report",
        description=DESCRIPTION))


def _command(args: argparse.Namespace) -> int:
    if args.dry_run:
        if args.stop is not None or args.resume is not None:
            raise ValueError("--dry-run takes a CONFIG only, no --resume / --stop")
        if args.config is None:
            raise ValueError("--dry-run needs the experiment CONFIG, e.g. experiments/comparison-quick.yml")
        return run_dry(args.config)
    if args.stop is not None:
        if args.config is not None or args.resume is not None:
            raise ValueError("--stop ID takes no CONFIG and no --resume")
        return stop_compare(args.stop)
    try:
        return run_compare(args.config, resume=args.resume, port=args.port, results=args.results,
                           expose=args.expose, poll=args.poll, retime=args.retime)
    except RuntimeError as err:  # NNI failed to start or stopped answering: not a usage error
        print(f"sparsemask compare: failed: {err}", file=sys.stderr)
        return 1


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m nni_sparsemask.comparison.compare ARGS`` = ``sparsemask compare ARGS``."""
    parser = add_arguments(argparse.ArgumentParser(prog="python -m nni_sparsemask.comparison.compare",
                                                   description=DESCRIPTION))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"sparsemask compare: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
