"""Broken checkpoints give one line naming the file; atomic writes never leave a half checkpoint."""
import os

import pytest
import torch

from nni_sparsemask.run.checkpoints import (AtomicCheckpointIO, CheckpointError, check_checkpoint, load_checkpoint,
                                            save_atomic)

STATE = {"state_dict": {"w": torch.arange(2000, dtype=torch.float32)}, "epoch": 3}


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save(STATE, path)
    return path


def _assert_one_line(err: pytest.ExceptionInfo, path) -> str:
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "delete it" in msg, msg
    exc = err.value  # no chained raw traceback under it
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    return msg


def _broken_files(good):
    data = good.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # one byte changed inside the tensor data
    return {
        "empty": (b"", "empty"),
        "truncated": (data[: len(data) // 2], "not a complete PyTorch checkpoint"),
        "truncated_tail": (data[:-10], "not a complete PyTorch checkpoint"),  # torch.load: OSError Errno 22
        "random": (os.urandom(5000), "not a complete PyTorch checkpoint"),
        "text": (b"hello world", "not a complete PyTorch checkpoint"),
        "flipped": (bytes(flipped), "fails the CRC check"),
    }


@pytest.mark.parametrize("kind", ["empty", "truncated", "truncated_tail", "random", "text", "flipped"])
def test_a_broken_checkpoint_is_one_line_naming_the_file(good, tmp_path, kind):
    content, what = _broken_files(good)[kind]
    path = tmp_path / f"{kind}.ckpt"
    path.write_bytes(content)
    for call in (check_checkpoint, load_checkpoint, AtomicCheckpointIO().load_checkpoint):
        with pytest.raises(CheckpointError) as err:
            call(path)
        assert what in _assert_one_line(err, path)
    assert isinstance(err.value, ValueError)  # the CLI prints ValueErrors as one `error:` line


def test_an_intact_checkpoint_loads(good):
    assert check_checkpoint(good) == good
    assert torch.equal(load_checkpoint(good)["state_dict"]["w"], STATE["state_dict"]["w"])
    assert AtomicCheckpointIO().load_checkpoint(good)["epoch"] == 3
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(good.with_name("none.ckpt"))


def test_weights_only_refusal_is_not_reported_as_corruption(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"obj": _Custom()}, path)
    with pytest.raises(Exception) as err:
        load_checkpoint(path, weights_only=True)
    assert not isinstance(err.value, CheckpointError)
    assert isinstance(load_checkpoint(path, weights_only=False)["obj"], _Custom)


class _Custom:
    pass


class _Boom(Exception):
    pass


def test_an_atomic_write_that_raises_midway_leaves_the_old_checkpoint(good):
    before = good.read_bytes()

    def half_then_raise(obj, f):
        torch.save(obj, f)
        f.seek(0)
        f.truncate(len(before) // 3)  # what a kill during the write leaves in the file being written
        raise _Boom()

    for io_save in (lambda: save_atomic({"new": 1}, good, save=half_then_raise),
                    lambda: AtomicCheckpointIO().save_checkpoint({"bad": _Unpicklable()}, good)):
        with pytest.raises((_Boom, RuntimeError, TypeError)):
            io_save()
        assert good.read_bytes() == before
        assert sorted(p.name for p in good.parent.iterdir()) == [good.name]  # no temporary file left
        assert load_checkpoint(good)["epoch"] == 3


class _Unpicklable:
    def __reduce__(self):
        raise _Boom("cannot pickle this")


def test_an_atomic_write_replaces_the_checkpoint(good, tmp_path):
    AtomicCheckpointIO().save_checkpoint({"epoch": 4}, good)
    assert load_checkpoint(good) == {"epoch": 4}
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, tmp_path / "new" / "c.ckpt")  # makes the folder
    assert load_checkpoint(tmp_path / "new" / "c.ckpt") == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["c.ckpt", "last.ckpt"]


def test_lightning_trainer_writes_through_it_and_refuses_a_broken_resume(tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            return self.lin(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    saved = []

    class Spy(AtomicCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            saved.append(path)
            super().save_checkpoint(checkpoint, path, storage_options)

    def trainer(epochs):
        return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, default_root_dir=str(tmp_path), plugins=[Spy()],
                          callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)])

    trainer(1).fit(Tiny(), data)
    last = tmp_path / "ckpt" / "last.ckpt"
    assert saved and str(saved[-1]) == str(last) and load_checkpoint(last, weights_only=False)["epoch"] == 0
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"checkpoint .*last\.ckpt is not a complete PyTorch checkpoint"):
        trainer(2).fit(Tiny(), data, ckpt_path=str(last))


def test_train_network_refuses_a_broken_last_checkpoint_before_training(tmp_path):
    from nni_sparsemask.run import pipeline
    from nni_sparsemask.run.rundir import RunDir

    run = RunDir(tmp_path / "run", {"x": 1})
    (run.checkpoints / "last.ckpt").write_bytes(b"")  # e.g. left by an older version killed mid-write
    with pytest.raises(CheckpointError, match=r"checkpoint .*last\.ckpt is empty \(0 bytes\).*delete it"):
        pipeline.train_network(torch.nn.Identity(), run, pipeline.TrainConfig(), pipeline.DataConfig(), resume=True,
                               progress=False, accelerator="cpu")
    run.close()


# ---- the search's own checkpoint (nas/searchdir.py) -------------------------------------------------------
def test_the_file_checks_live_in_the_base_layer_and_run_re_exports_them():
    from nni_sparsemask import checkpoint_files
    from nni_sparsemask.run import checkpoints

    for name in ("CheckpointError", "check_checkpoint", "load_checkpoint"):
        assert getattr(checkpoints, name) is getattr(checkpoint_files, name)


@pytest.mark.parametrize("kind", ["empty", "truncated", "flipped"])
def test_searchdir_resume_epoch_refuses_a_broken_checkpoint_in_one_line(good, tmp_path, kind):
    from nni_sparsemask.nas import searchdir

    content, what = _broken_files(good)[kind]
    path = tmp_path / "search-last.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        searchdir.resume_epoch(path)
    assert what in _assert_one_line(err, path)


TINY_SEARCH = ["--epochs", "1", "--no-progress", "--backbone", "convnet", "--backbone-kwargs",
               '{"widths": [4, 8, 8, 8, 8]}', "--backbone-weights", "none", "--decoder-channels", "8",
               "--image-size", "32", "--train-scenes", "32", "--val-scenes", "8", "--batch-size", "8"]


@pytest.mark.usefixtures("isolated_cache")
def test_search_resume_from_a_broken_search_checkpoint_is_one_error_line(tmp_path, capsys):
    """``sparsemask search --resume`` on a run whose SparseMask checkpoint (``search/checkpoints/search-last.ckpt``)
    was cut short: exit status 2 and one line naming the file, not torch's zip-reader traceback."""
    from nni_sparsemask.cli import main
    from nni_sparsemask.nas.searchdir import CHECKPOINT_FILE, RESULT_FILE

    out = tmp_path / "s"
    assert main(["search", "--out", str(out)] + TINY_SEARCH) == 0
    # what an interrupted search leaves: its checkpoint, no result yet
    (out / "search.json").unlink()
    (out / "search" / RESULT_FILE).unlink()
    ckpt = out / "search" / CHECKPOINT_FILE
    data = ckpt.read_bytes()
    for content, what in ((data[: len(data) // 2], "not a complete PyTorch checkpoint"), (b"", "empty (0 bytes)")):
        ckpt.write_bytes(content)
        capsys.readouterr()
        assert main(["search", "--out", str(out), "--resume"] + TINY_SEARCH) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "PytorchStreamReader" not in err, err
        errors = [line for line in err.splitlines() if line.startswith("sparsemask search: error:")]
        assert len(errors) == 1 and str(ckpt) in errors[0] and what in errors[0] and "delete it" in errors[0], err
        assert ckpt.read_bytes() == content  # left as it was, for the user to look at
