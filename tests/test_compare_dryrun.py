"""``sparsemask compare --dry-run CONFIG``: every trial's command (the trial command with the entry's parameters as
``--params``), and one line per piece the trials need that is not here (data roots in their layout, backbone
weights files, CUDA devices); exit status 2 if anything is missing, else 0; nothing launched, nothing written."""
import json
import shlex
from pathlib import Path

import pytest
from helpers import TRIAL_TINY

from nni_sparsemask.cli import main
from nni_sparsemask.comparison import plan as plan_module
from nni_sparsemask.comparison.grid import expand_search_space

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"

pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture
def devices(monkeypatch):
    """``set(n)``: this machine has ``n`` CUDA devices, as the dry run sees them."""
    import torch

    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    set_count(0)
    return set_count


@pytest.fixture
def torch_hub(tmp_path, monkeypatch):
    """An empty torch hub cache; returns its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    folder = tmp_path / "torch-home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def dry(capsys, *args):
    status = main(["compare", "--dry-run", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


def missing_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("sparsemask compare: missing: ")]


#: a local training service that may give trials GPUs (NNI wants useActiveGpu set then)
GPU_LOCAL = {"platform": "local", "useActiveGpu": False}


def write_config(folder: Path, settings=None, extra_args: str = "", space=None, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    space = space or {"params": {"_type": "choice", "_value": [{"_name": "fcn"}, {"_name": "unet"}]},
                      "seed": {"_type": "choice", "_value": [0, 1]}}
    (folder / "space.json").write_text(json.dumps(space))
    command = (f"python -m nni_sparsemask.comparison.trial --results runs --settings "
               f"'{json.dumps(settings or TRIAL_TINY)}' {extra_args}").strip()
    config = {"experimentName": "dry-run-test", "searchSpaceFile": "space.json", "trialCommand": command,
              "trialCodeDirectory": ".", "trialConcurrency": 1, "experimentWorkingDirectory": str(folder / "nni"),
              "tuner": {"name": "GridSearch"}, "trainingService": {"platform": "local"}, **fields}
    path = folder / "experiment.yml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return path


def _tree(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


# ------------------------------------------------------------------------------------------------ the shipped configs
def test_quick_config_lists_every_trial_and_passes(capsys, devices):
    status, out, err = dry(capsys, EXPERIMENTS / "comparison-quick.yml")
    assert status == 0, err
    assert missing_lines(err) == [] and "everything the trials need is here" in out
    commands = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("trial ")]
    space = json.loads((EXPERIMENTS / "search_space_quick.json").read_text())
    expected = expand_search_space(space)
    assert len(commands) == len(expected) == 28 and out.count("/28: ") == 28
    for command, parameters in zip(commands, expected):  # the trial command, then the entry's parameters
        tokens = shlex.split(command)
        assert tokens[:8] == ["python", "-m", "nni_sparsemask.comparison.trial", "--preset", "quick", "--results",
                              "runs/comparison-quick", "--params"]
        assert json.loads(tokens[8]) == parameters
    assert f"each command runs in {ROOT}" in out


def test_paper_config_reports_the_missing_voc_root_in_one_line(capsys, devices, torch_hub):
    devices(1)
    (torch_hub / "mobilenet_v2-b0353104.pth").write_bytes(b"")  # the ImageNet weights are "cached"
    status, out, err = dry(capsys, EXPERIMENTS / "comparison.yml")
    assert status == 2
    lines = missing_lines(err)
    voc = [line for line in lines if "/path/to/voc" in line]
    assert len(voc) == 1 and "--data-root" in voc[0] and "VOCdevkit/VOC2012" in voc[0]
    assert len(lines) == 2 and "--sbd-root" in lines[1]  # SBD's root is missing too; nothing else
    assert err.strip().splitlines() == lines  # one line each, nothing else on stderr
    assert out.count("trial ") >= 72 and "2 missing piece(s)" in out and "nothing was launched" in out


def test_paper_config_on_a_machine_without_gpus_or_weights(capsys, devices, torch_hub):
    status, _, err = dry(capsys, EXPERIMENTS / "comparison.yml")
    assert status == 2
    lines = missing_lines(err)
    assert len(lines) == 4, lines
    assert any("mobilenet_v2-b0353104.pth" in line and str(torch_hub) in line for line in lines)
    assert any("trialGpuNumber is 1" in line and "has 0" in line for line in lines)


@pytest.mark.parametrize("name", ["remote.yml", "kubeflow.yml", "frameworkcontroller.yml"])
def test_cluster_templates_list_commands_and_what_the_workers_need(name, capsys, devices, tmp_path):
    path = EXPERIMENTS / name
    if name == "remote.yml":  # NNI checks that the SSH key file exists: the template's is a placeholder
        text = path.read_text().replace("~/.ssh/id_rsa", str(tmp_path / "id_rsa"))
        (tmp_path / "id_rsa").write_text("placeholder\n")
        (tmp_path / "search_space.json").write_text((EXPERIMENTS / "search_space.json").read_text())
        path = tmp_path / name
        path.write_text(text)
    status, out, err = dry(capsys, path)
    assert status == 0, err
    assert "--params" in out and "/path/to" not in out
    assert "whose files and devices are not checked from here" in out and "--data-root" in out


def test_a_missing_ssh_key_is_one_error_line(capsys):
    status, _, err = dry(capsys, EXPERIMENTS / "remote.yml")  # ~/.ssh/id_rsa of the template
    if status == 0:
        pytest.skip("this machine has ~/.ssh/id_rsa")
    assert status == 2 and len(err.strip().splitlines()) == 1 and "SSH key file" in err


# ------------------------------------------------------------------------------------------------ the checks
def _voc(root: Path) -> None:
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    for split in ("train", "val"):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("2007_000032\n")


def _sbd(root: Path) -> None:
    dataset = root / "benchmark_RELEASE" / "dataset"
    for sub in ("img", "cls"):
        (dataset / sub).mkdir(parents=True)
    for split in ("train", "val"):
        (dataset / f"{split}.txt").write_text("2008_000002\n")


def test_data_roots_in_their_layout_pass_relative_to_the_code_directory(tmp_path, capsys, devices):
    voc_settings = {**TRIAL_TINY, "data": {**TRIAL_TINY["data"], "dataset": "voc", "root": "data/voc"}}
    path = write_config(tmp_path / "exp", voc_settings, "--sbd-root data/sbd")
    status, _, err = dry(capsys, path)
    assert status == 2
    lines = missing_lines(err)
    assert len(lines) == 2 and "data/voc" in lines[0] and "--data-root" in lines[0] and "--sbd-root" in lines[1]
    _voc(tmp_path / "exp" / "data" / "voc")
    _sbd(tmp_path / "exp" / "data" / "sbd")
    status, out, err = dry(capsys, path)
    assert (status, missing_lines(err)) == (0, []), err


def test_an_incomplete_root_says_what_is_missing(tmp_path, capsys, devices):
    _voc(tmp_path / "voc")
    (tmp_path / "voc" / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").unlink()
    settings = {**TRIAL_TINY, "data": {**TRIAL_TINY["data"], "dataset": "voc", "root": str(tmp_path / "voc")}}
    status, _, err = dry(capsys, write_config(tmp_path / "exp", settings))
    (line,) = missing_lines(err)
    assert status == 2 and "val.txt" in line and "--data-root" in line


def test_weights_files_and_names(tmp_path, capsys, devices, torch_hub):
    folder = tmp_path / "exp"
    model = {**TRIAL_TINY["model"], "backbone_weights": "weights/convnet.pth"}
    path = write_config(folder, {**TRIAL_TINY, "model": model})
    status, _, err = dry(capsys, path)
    (line,) = missing_lines(err)
    assert status == 2 and "backbone weights file weights/convnet.pth not found" in line
    assert str(folder / "weights" / "convnet.pth") in line  # read from the trial code directory
    (folder / "weights").mkdir()
    (folder / "weights" / "convnet.pth").write_bytes(b"")
    assert dry(capsys, path)[0] == 0
    # a torchvision weights name: its file must be in the torch hub cache
    model = {"backbone": "mobilenet_v2", "backbone_kwargs": {}, "backbone_weights": "IMAGENET1K_V1",
             "decoder_channels": 8}
    path = write_config(tmp_path / "tv", {**TRIAL_TINY, "model": model})
    status, _, err = dry(capsys, path)
    (line,) = missing_lines(err)
    assert status == 2 and "not in the torch hub cache" in line and "mobilenet_v2-b0353104.pth" in line
    (torch_hub / "mobilenet_v2-b0353104.pth").write_bytes(b"")
    assert dry(capsys, path)[0] == 0


def test_device_counts(tmp_path, capsys, devices):
    path = write_config(tmp_path / "gpus", trialGpuNumber=2, trainingService=GPU_LOCAL)
    devices(1)
    status, _, err = dry(capsys, path)
    (line,) = missing_lines(err)
    assert status == 2 and "trialGpuNumber is 2" in line and "2 CUDA device(s)" in line and "has 1" in line
    devices(2)
    assert dry(capsys, path)[0] == 0
    devices(0)
    path = write_config(tmp_path / "acc", {**TRIAL_TINY, "accelerator": "gpu"})
    status, _, err = dry(capsys, path)
    (line,) = missing_lines(err)
    assert status == 2 and "accelerator 'gpu' needs a CUDA device" in line


def test_nothing_is_launched_or_written(tmp_path, capsys, devices):
    folder = tmp_path / "exp"
    path = write_config(folder, trialGpuNumber=1, trainingService=GPU_LOCAL)
    before = _tree(tmp_path)
    status, _, err = dry(capsys, path)
    assert status == 2 and len(missing_lines(err)) == 1, err
    assert _tree(tmp_path) == before  # no nni/ folder, no runs/
    assert not (folder / "nni").exists() and not (folder / "runs").exists()


# ------------------------------------------------------------------------------------------------ errors
def test_bad_inputs_are_one_error_line(tmp_path, capsys):
    cases = [
        (["compare", "--dry-run"], "--dry-run needs the experiment CONFIG"),
        (["compare", "--dry-run", "x.yml", "--resume", "abc"], "--dry-run takes a CONFIG only"),
        (["compare", "--dry-run", "--stop", "abc"], "--dry-run takes a CONFIG only"),
        (["compare", "--dry-run", str(tmp_path / "nope.yml")], "experiment config not found"),
        (["compare", "--dry-run", str(write_config(tmp_path / "bad", space={
            "params": {"_type": "choice", "_value": [{"_name": "nope"}]}}))], "unknown method 'nope'"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_trial_command_of_places_params_before_a_shell_operator():
    command = "cd /code && python -m nni_sparsemask.comparison.trial --preset quick && echo done"
    out = plan_module.trial_command_of(command, {"params": {"_name": "fcn"}, "seed": 0})
    assert out == ("cd /code && python -m nni_sparsemask.comparison.trial --preset quick --params "
                   "'{\"params\": {\"_name\": \"fcn\"}, \"seed\": 0}' && echo done")
    assert plan_module.trial_command_of("python train.py", {"x": 1}) == "python train.py"
