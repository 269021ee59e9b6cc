"""What the analysis needs of the tasks a run can be scored on: which score ranks a run, how it is named.

A copy of ``nni_sparsemask.run.tasks.TASKS`` (the run layer, which the analysis does not import: it reads run
directories, not networks); ``tests/test_analysis_tasks.py`` checks that the two agree.

=============  ==========  ===========  =========================================================================
task           main score  label        scores (main first)
=============  ==========  ===========  =========================================================================
segmentation   ``miou``    mIoU         miou, pixel_accuracy, fg_iou, score (= (mIoU + PixAcc) / 2, ADE20K's)
saliency       max_fbeta   max F-beta   max_fbeta, mae (lower is better), miou, pixel_accuracy, fg_iou
edges          ``ods``     ODS          ods, ois, ap, miou, pixel_accuracy, fg_iou
=============  ==========  ===========  =========================================================================

A run whose ``metrics.json`` has no ``task`` (written by an earlier release) is a :data:`DEFAULT_TASK` run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

__all__ = ["TASKS", "TaskInfo", "DEFAULT_TASK", "SCORE_COLUMNS", "SCORE_LABELS", "TABLE_SCORES",
           "ADE20K_TABLE_SCORES", "task_info", "check_task_name", "single_task"]

DEFAULT_TASK = "segmentation"


@dataclass(frozen=True)
class TaskInfo:
    """``main``: the score a task is ranked by (NNI's ``default``, the y axis of Fig. 4); ``label``: how tables and
    axes name it; ``scores``: every score of the task, main first; ``lower_is_better``: the scores where lower is
    better (MAE)."""

    name: str
    main: str
    label: str
    scores: tuple[str, ...]
    lower_is_better: tuple[str, ...] = ()


_CM = ("miou", "pixel_accuracy", "fg_iou")
TASKS: dict[str, TaskInfo] = {t.name: t for t in (
    TaskInfo("segmentation", "miou", "mIoU", _CM + ("score",)),
    TaskInfo("saliency", "max_fbeta", "max F-beta", ("max_fbeta", "mae") + _CM, lower_is_better=("mae",)),
    TaskInfo("edges", "ods", "ODS", ("ods", "ois", "ap") + _CM),
)}

#: every score column of the results, in the order of the tasks
SCORE_COLUMNS: tuple[str, ...] = tuple(dict.fromkeys(s for t in TASKS.values() for s in t.scores))
#: how tables name each score
SCORE_LABELS = {"miou": "mIoU", "pixel_accuracy": "PixAcc", "fg_iou": "FG IoU", "score": "Score",
                "max_fbeta": "max F-beta", "mae": "MAE", "ods": "ODS", "ois": "OIS", "ap": "AP"}
#: the score columns of Table 1 per task (segmentation: mIoU alone, PixAcc / mIoU / Score on ADE20K)
TABLE_SCORES = {"segmentation": ("miou",), "saliency": ("max_fbeta", "mae"), "edges": ("ods", "ois", "ap")}
ADE20K_TABLE_SCORES = ("pixel_accuracy", "miou", "score")


def check_task_name(task: Any, where: str = "") -> str:
    if not isinstance(task, str) or task not in TASKS:
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}unknown task {task!r}; use one of {', '.join(TASKS)}")
    return task


def task_info(task: str) -> TaskInfo:
    return TASKS[check_task_name(task)]


def single_task(tasks: Iterable[Any]) -> str:
    """The one task of a results table's ``task`` column (:data:`DEFAULT_TASK` when empty); several tasks are a
    ``ValueError`` (their scores are not comparable)."""
    found = sorted({str(t) for t in tasks if t is not None and t == t})
    if len(found) > 1:
        raise ValueError(f"runs of several tasks ({', '.join(found)}): plot and tabulate each task's runs apart")
    return found[0] if found else DEFAULT_TASK
