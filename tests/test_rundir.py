import json

import pytest

from nni_sparsemask.run.rundir import RunDir, read_json


def test_new_run_dir_writes_config(tmp_path):
    rd = RunDir(tmp_path / "run", {"a": 1})
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"a": 1}
    assert not rd.finished and not rd.resumed
    rd.write_json("metrics.json", {"miou": 0.5})
    assert rd.finished
    rd.write_history([{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5, "miou": 0.2}])
    lines = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert lines == ["epoch,loss,miou", "0,1.0,", "1,0.5,0.2"]


def test_existing_run_dir_is_never_overwritten_silently(tmp_path):
    RunDir(tmp_path / "run", {"a": 1}).write_json("metrics.json", {"miou": 0.5})
    with pytest.raises(FileExistsError, match="--resume .* --overwrite"):
        RunDir(tmp_path / "run", {"a": 1})
    assert read_json(tmp_path / "run" / "metrics.json") == {"miou": 0.5}


def test_resume_needs_the_same_config(tmp_path):
    RunDir(tmp_path / "run", {"a": 1, "b": 2})
    with pytest.raises(ValueError, match="another configuration.*differs in b"):
        RunDir(tmp_path / "run", {"a": 1, "b": 3}, resume=True)
    rd = RunDir(tmp_path / "run", {"a": 1, "b": 2, "resume": True}, resume=True)
    assert rd.resumed


def test_resume_may_change_only_the_changeable_keys(tmp_path):
    run = tmp_path / "run"
    RunDir(run, {"a": 1, "baselines": ["fcn"]}).close()
    with pytest.raises(ValueError, match="differs in a\\)"):  # the changeable key is not named as the obstacle
        RunDir(run, {"a": 2, "baselines": ["fcn", "unet"]}, resume=True, changeable=("baselines",))
    assert read_json(run / "config.json") == {"a": 1, "baselines": ["fcn"]}  # a refused resume writes nothing
    with pytest.raises(ValueError, match="differs in baselines"):  # not changeable unless the command says so
        RunDir(run, {"a": 1, "baselines": ["fcn", "unet"]}, resume=True)
    rd = RunDir(run, {"a": 1, "baselines": ("fcn", "unet")}, resume=True, changeable=("baselines",))
    assert rd.resumed and rd.changed == ["baselines"]
    assert read_json(run / "config.json") == {"a": 1, "baselines": ["fcn", "unet"]}  # the new value is recorded
    rd.close()
    rd = RunDir(run, {"a": 1, "baselines": ["fcn", "unet"]}, resume=True, changeable=("baselines",))
    assert rd.resumed and rd.changed == []


def test_a_moved_input_resumes_by_its_content_not_its_path(tmp_path):
    run, where = tmp_path / "run", {"located": {"conn": "edges"}}
    RunDir(run, {"conn": "/old/c.json", "edges": [["D1", "E1"]]}, **where).close()
    rd = RunDir(run, {"conn": "/new/c.json", "edges": [["D1", "E1"]]}, resume=True, **where)
    assert rd.resumed  # the run (or its input) was moved: same content, so it resumes
    rd.close()
    with pytest.raises(ValueError, match="differs in edges\\)"):  # other content is refused, and only it is named
        RunDir(run, {"conn": "/new/c.json", "edges": [["D1", "E2"]]}, resume=True, **where)
    legacy = tmp_path / "legacy"  # written before the content was recorded: the path decides, as it did then
    RunDir(legacy, {"conn": "/old/c.json"}).close()
    RunDir(legacy, {"conn": "/old/c.json", "edges": [["D1", "E2"]]}, resume=True, **where).close()
    with pytest.raises(ValueError, match="differs in conn\\)"):
        RunDir(legacy, {"conn": "/new/c.json", "edges": [["D1", "E2"]]}, resume=True, **where)


def test_overwrite_replaces_and_flags_conflict(tmp_path):
    RunDir(tmp_path / "run", {"a": 1}).write_json("metrics.json", {})
    rd = RunDir(tmp_path / "run", {"a": 2}, overwrite=True)
    assert not rd.finished and read_json(tmp_path / "run" / "config.json") == {"a": 2}
    with pytest.raises(ValueError, match="exclude each other"):
        RunDir(tmp_path / "x", {}, overwrite=True, resume=True)


def test_corrupt_json_is_reported(tmp_path):
    (tmp_path / "m.json").write_text("{oops")
    with pytest.raises(ValueError, match="corrupt JSON"):
        read_json(tmp_path / "m.json")
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "none.json")
