"""Search and retraining on 2 CPU processes: Lightning DDP over gloo, the processes forked inside ``fit``
(``--devices 2 --dist-strategy ddp``, :mod:`nni_sparsemask.run.distributed`).

Each DDP run records, from inside its processes (a callback writing one file per rank and epoch), w on every rank
after every epoch, and every ``os.replace`` (how each file of a run directory lands) with the pid that made it.
"""
import json
import os

import pytest
import pytorch_lightning as pl
import torch

from nni_sparsemask.run import distributed
from nni_sparsemask.run.config import DataConfig, ModelConfig, SearchConfig, TrainConfig
from nni_sparsemask.run.steps import run_retrain, run_search
from nni_sparsemask.seeding import EpochShuffle

MODEL = ModelConfig(backbone="convnet", backbone_kwargs={"widths": [4, 6, 8, 10, 12]}, backbone_weights=None,
                    decoder_channels=8)
DATA = DataConfig(image_size=32, train_scenes=32, val_scenes=8, batch_size=8)
SCHEDULE = SearchConfig(epochs=2, learning_rate=0.01)
DDP = dict(progress=False, log=lambda s: None, accelerator="cpu", devices=2, dist_strategy="ddp")

pytestmark = pytest.mark.usefixtures("isolated_cache")


class Record(pl.Callback):
    """One JSON file per rank and epoch: rank, world size, pid and, in a search, w."""

    def __init__(self, folder, tag):
        self.folder, self.tag = folder, tag

    def on_train_epoch_end(self, trainer, module):
        rec = {"rank": trainer.global_rank, "world": trainer.world_size, "pid": os.getpid(),
               "w": module.current_weights() if hasattr(module, "current_weights") else None}
        (self.folder / f"{self.tag}-epoch{trainer.current_epoch}-rank{trainer.global_rank}.json").write_text(
            json.dumps(rec))


class Crash(pl.Callback):
    """A crash at the start of epoch ``epoch`` (tests/test_strategy.py's ``StopAt``), in every process."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def records(folder, tag):
    """``{epoch: {rank: record}}`` of the run ``tag``."""
    out = {}
    for f in folder.glob(f"{tag}-epoch*-rank*.json"):
        epoch, rank = f.stem[len(tag) + 6:].split("-rank")
        out.setdefault(int(epoch), {})[int(rank)] = json.loads(f.read_text())
    return out


def run(fn, folder, tag, *args, callbacks=(), **kwargs):
    """``fn(*args, **kwargs)`` with :class:`Record` (+ ``callbacks``) in its Trainer and every ``os.replace`` noted
    in ``folder/replaced-<tag>.txt`` as ``pid<TAB>path``; the forked processes inherit both patches."""
    import pytorch_lightning.trainer.trainer as tt

    audit, real_replace = folder / f"replaced-{tag}.txt", os.replace
    extra = [Record(folder, tag), *callbacks]

    def replace(src, dst, *a, **k):
        with open(audit, "a") as f:
            f.write(f"{os.getpid()}\t{os.fspath(dst)}\n")
        return real_replace(src, dst, *a, **k)

    original_init = tt.Trainer.__init__

    def init(self, *a, callbacks=None, **k):  # the search's (NNI's traced subclass) and the retraining's Trainer
        original_init(self, *a, callbacks=list(callbacks or []) + extra, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "replace", replace)
        mp.setattr(tt.Trainer, "__init__", init)
        return fn(*args, **kwargs)


def replaced(folder, tag, inside):
    """``[(pid, path relative to inside)]`` of the ``os.replace`` calls of run ``tag`` into ``inside``."""
    path = folder / f"replaced-{tag}.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    out = []
    for line in lines:
        pid, dst = line.split("\t")
        if dst.startswith(str(inside)):
            out.append((int(pid), os.path.relpath(dst, inside)))
    return out


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != ".lock")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """An uninterrupted 2-epoch search on 2 processes: (folder, out, summary)."""
    folder = tmp_path_factory.mktemp("ddp")
    with pytest.MonkeyPatch.context() as mp:  # module scope: the function-scoped isolated_cache is not set yet
        mp.setenv("NNI_SPARSEMASK_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sm-cache"))
        summary = run(run_search, folder, "full", folder / "sm", "sparsemask", {"lambda_sparse": 0.01}, DATA, MODEL,
                      SCHEDULE, **DDP)
    return folder, folder / "sm", summary


# ------------------------------------------------------------------------------------------------ search
def test_every_rank_holds_the_same_w_after_every_epoch(full):
    folder, out, summary = full
    recs = records(folder, "full")
    assert sorted(recs) == [0, 1] and all(sorted(r) == [0, 1] for r in recs.values())
    for epoch, by_rank in recs.items():
        assert by_rank[0]["world"] == by_rank[1]["world"] == 2
        assert by_rank[0]["pid"] != by_rank[1]["pid"] != os.getpid()
        assert by_rank[0]["w"] == by_rank[1]["w"], f"w differs between the ranks after epoch {epoch}"
    # what the calling process writes is rank 0's: its w and the w history it handed back
    result = json.loads((out / "search" / "search_result.json").read_text())
    assert summary["weights"] == recs[1][0]["w"] == result["weights"]
    assert result["history"] == [recs[0][0]["w"], recs[1][0]["w"]]
    assert torch.load(out / "search" / "checkpoints" / "search-last.ckpt",
                      weights_only=True)["sparsemask"]["world_size"] == 2


def test_the_run_directory_is_written_once_by_rank_0(full):
    folder, out, _ = full
    recs = records(folder, "full")
    rank0, rank1 = recs[0][0]["pid"], recs[0][1]["pid"]
    writes = replaced(folder, "full", out)
    assert writes and rank1 not in {pid for pid, _ in writes}
    assert [path for pid, path in writes if pid == rank0] == [os.path.join("search", "checkpoints",
                                                                           "search-last.ckpt")] * 2
    assert {pid for pid, _ in writes} == {rank0, os.getpid()}  # the rest: the calling process, after fit
    expected = {"config.json", "connectivity.json", "connectivity_full.json", "search.json",
                os.path.join("search", "checkpoints", "search-last.ckpt"), os.path.join("search", "search_result.json"),
                os.path.join("search", "sparsemask_strategy.json"), "w_heatmap.png"}
    assert set(files(out)) - {"w_heatmap.png"} == expected - {"w_heatmap.png"}  # (the figure is optional)
    assert not [f for f in files(out) if f.endswith(".tmp")]


def test_a_resumed_ddp_search_continues_from_its_last_epoch(full, tmp_path):
    folder, _, whole = full
    out = tmp_path / "sm"
    args = (out, "sparsemask", {"lambda_sparse": 0.01}, DATA, MODEL, SCHEDULE)
    with pytest.raises(Exception, match="simulated crash"):
        run(run_search, tmp_path, "cut", *args, callbacks=[Crash(1)], **DDP)
    ckpt = out / "search" / "checkpoints" / "search-last.ckpt"
    assert ckpt.is_file() and not (out / "search.json").exists()
    assert sorted(records(tmp_path, "cut")) == [0]
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match=r"written by a search on 2 process\(es\), this one runs 1"):
        run_search(*args, resume=True, **dict(DDP, devices=1, dist_strategy="auto"))
    assert ckpt.read_bytes() == before
    resumed = run(run_search, tmp_path, "resumed", *args, resume=True, **DDP)
    recs = records(tmp_path, "resumed")
    assert sorted(recs) == [1] and recs[1][0]["w"] == recs[1][1]["w"]  # epoch 1 only, the same w on both ranks
    result = json.loads((out / "search" / "search_result.json").read_text())
    assert result["history"][0] == records(tmp_path, "cut")[0][0]["w"]
    assert resumed["weights"] == whole["weights"]  # as if never interrupted
    assert result["history"] == json.loads((folder / "sm" / "search" / "search_result.json").read_text())["history"]


# ------------------------------------------------------------------------------------------------ retrain
def test_a_ddp_retraining_writes_its_run_directory_from_rank_0(tmp_path):
    out = tmp_path / "fcn"
    metrics = run(run_retrain, tmp_path, "fcn", out, DATA, MODEL, TrainConfig(epochs=2, learning_rate=0.01),
                  decoder="fcn", fps_seconds=0.05, **DDP)
    recs = records(tmp_path, "fcn")
    assert sorted(recs) == [0, 1] and recs[0][0]["world"] == 2
    rank0, rank1 = recs[0][0]["pid"], recs[0][1]["pid"]
    writes = replaced(tmp_path, "fcn", out)
    assert rank1 not in {pid for pid, _ in writes}
    assert [p for pid, p in writes if pid == rank0 and p == "history.csv"] == ["history.csv"] * 2
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss") and [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    assert metrics["epochs"] == 2 and metrics["train_seconds"] > 0
    assert {"metrics.json", "model.pt", "history.csv", os.path.join("checkpoints", "last.ckpt")} <= set(files(out))
    assert not [f for f in files(out) if f.endswith(".tmp")]
    (out / "metrics.json").unlink()  # unfinished again: a resume on one process is refused before training
    with pytest.raises(ValueError, match=r"written by a retraining on 2 process\(es\), this one runs 1"):
        run_retrain(out, DATA, MODEL, TrainConfig(epochs=2, learning_rate=0.01), decoder="fcn", fps_seconds=0.05,
                    resume=True, **dict(DDP, devices=1, dist_strategy="auto"))


# ------------------------------------------------------------------------------------------------ pieces
@pytest.mark.parametrize("n", [32, 7, 1])
def test_the_epoch_order_is_shared_out_between_the_processes(monkeypatch, n):
    one = distributed.ShardedEpochShuffle(n, seed=3)
    one.set_epoch(2)
    order = EpochShuffle(n, 3)
    order.set_epoch(2)
    assert list(one) == list(order) and len(one) == n  # one process: EpochShuffle's order
    shards = []
    for rank in range(2):
        monkeypatch.setattr(distributed, "rank_and_world", lambda rank=rank: (rank, 2))
        shards.append(list(one))
        assert len(one) == len(shards[-1]) == (n + 1) // 2
    assert sorted(set(shards[0]) | set(shards[1])) == list(range(n))  # every image, in as many steps on each
    one.set_epoch(3)
    assert list(one) != shards[1] or n == 1  # another epoch, another order


def test_dist_settings_are_checked_before_anything_is_written(tmp_path):
    for devices, strategy, match in [(0, "auto", "--devices must be"), (2, "horovod", "unknown --dist-strategy")]:
        with pytest.raises(ValueError, match=match):
            run_search(tmp_path / "s", "sparsemask", {}, DATA, MODEL, SCHEDULE, accelerator="cpu", devices=devices,
                       dist_strategy=strategy)
    assert not (tmp_path / "s").exists()
    assert distributed.trainer_options(1, "auto", "cpu") == {"devices": 1}
    opts = distributed.trainer_options(2, "ddp_spawn", "cpu")
    assert opts["devices"] == 2 and opts["strategy"]._start_method == "spawn" and not opts["sync_batchnorm"]


def test_the_cli_passes_devices_and_dist_strategy(monkeypatch, tmp_path):
    import nni_sparsemask.run.steps as steps
    from nni_sparsemask.cli import main

    seen = {}

    def fake(name):
        def call(*args, **kwargs):
            seen[name] = kwargs
            raise ValueError("stop here")
        return call

    monkeypatch.setattr(steps, "run_search", fake("search"))
    monkeypatch.setattr(steps, "run_retrain", fake("retrain"))
    assert main(["search", "--out", str(tmp_path / "s"), "--devices", "2", "--dist-strategy", "ddp"]) == 2
    assert main(["retrain", "--decoder", "fcn", "--out", str(tmp_path / "r"), "--devices", "3"]) == 2
    assert (seen["search"]["devices"], seen["search"]["dist_strategy"]) == (2, "ddp")
    assert (seen["retrain"]["devices"], seen["retrain"]["dist_strategy"]) == (3, "auto")
