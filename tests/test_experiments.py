"""experiments/: the configs validate with NNI's own classes, the Dockerfile installs the package as the README
says, the grids cover the registries, and the trial entry runs one grid entry end to end (in process, NNI's trial
channel mocked), reuses a finished entry, and fails alone."""
import json
from pathlib import Path

import pytest
from helpers import TRIAL_TINY

from nni_sparsemask import trial
from nni_sparsemask.run.registry import DECODERS, STRATEGIES

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
CONFIGS = ["comparison-quick.yml", "comparison.yml", "remote.yml", "kubeflow.yml", "frameworkcontroller.yml"]

TINY = TRIAL_TINY


pytestmark = pytest.mark.usefixtures("isolated_cache")


def tiny_settings():
    return trial.preset_settings("quick", TINY)


def quiet(_message):
    pass


# ------------------------------------------------------------------------------------------------ configs
def _load_with_nni(name, tmp_path):
    from nni.experiment.config import ExperimentConfig

    config = ExperimentConfig.load(str(EXPERIMENTS / name))
    if config.training_service.platform == "remote":  # NNI checks that the SSH key file exists
        key = tmp_path / "id_rsa"
        key.write_text("placeholder key for the config check\n")
        for machine in config.training_service.machine_list:
            machine.ssh_key_file = str(key)
    return config


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_validates_with_nni_config_classes(name, tmp_path):
    from nni.experiment.config import ExperimentConfig

    config = _load_with_nni(name, tmp_path)
    assert type(config) is ExperimentConfig
    canonical = config.canonical_copy()  # NNI's own validation; raises on any bad field
    assert canonical.tuner.name == "GridSearch"
    assert canonical.search_space  # searchSpaceFile resolved and read
    platform = {"comparison-quick.yml": "local", "comparison.yml": "local", "remote.yml": "remote",
                "kubeflow.yml": "kubeflow", "frameworkcontroller.yml": "frameworkcontroller"}[name]
    assert canonical.training_service.platform == platform


@pytest.mark.parametrize("name", ["comparison-quick.yml", "remote.yml", "kubeflow.yml", "frameworkcontroller.yml"])
def test_configs_plan_as_comparisons(name, tmp_path):
    from nni_sparsemask.comparison.compare import plan_comparison

    plan = plan_comparison(_load_with_nni(name, tmp_path), name)
    assert plan.entries and not plan.notes
    if name == "comparison-quick.yml":
        assert plan.settings.data.dataset == "digitscenes" and plan.settings.model.backbone == "convnet"
        assert plan.results_root == ROOT / "runs" / "comparison-quick"
        assert plan.config.trial_concurrency == 1
    else:
        assert plan.settings.data.dataset == "voc" and plan.settings.model.backbone == "mobilenet_v2"
        assert plan.results_root is None  # on the workers


@pytest.mark.parametrize("name", ["kubeflow.yml", "frameworkcontroller.yml"])
def test_kubernetes_templates_validate_with_azure_storage_too(name):
    """The other storage experiments/README.md documents: an Azure file share, its key in a Key Vault."""
    import yaml
    from nni.experiment.config import ExperimentConfig

    data = yaml.safe_load((EXPERIMENTS / name).read_text())
    data["trainingService"]["storage"] = {"storageType": "azureStorage", "azureAccount": "account",
                                          "azureShare": "share", "keyVaultName": "vault", "keyVaultKey": "key"}
    data["searchSpaceFile"] = str(EXPERIMENTS / data["searchSpaceFile"])
    data["trialCodeDirectory"] = str(EXPERIMENTS)
    for spec in [data["trainingService"].get("master")] + data["trainingService"].get("taskRoles", []):
        if spec and "codeDirectory" in spec:
            spec["codeDirectory"] = str(EXPERIMENTS)
    canonical = ExperimentConfig(**data).canonical_copy()
    assert canonical.training_service.storage.storage_type == "azureStorage"


# ------------------------------------------------------------------------------------------------ the image
def _dockerfile() -> str:
    return (EXPERIMENTS / "Dockerfile").read_text()


def test_dockerfile_installs_the_package_as_the_readme_says():
    tomllib = pytest.importorskip("tomllib")
    import re

    text = _dockerfile()
    readme = (EXPERIMENTS / "README.md").read_text()
    runs = [line.strip()[4:] for line in text.replace("\\\n", " ").splitlines() if line.startswith("RUN ")]
    installs = [run for run in runs if "pip install" in run]
    assert installs == ["pip install -c constraints.txt ."]
    assert f"`{installs[0]}`" in readme  # the install of an SSH worker and of the image, as the README writes it
    assert re.search(r"^FROM python:3\.\d+", text, flags=re.M)
    # everything the install reads is in the image: pyproject, its readme, constraints, every package folder
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {word.rstrip("/") for line in text.splitlines() if line.startswith("COPY ")
              for word in line.split()[1:-1]}
    folders = {"nni_sparsemask", *pyproject["tool"]["setuptools"]["package-dir"].values()}
    assert {"pyproject.toml", "constraints.txt", pyproject["project"]["readme"], *folders} <= copied
    # with NNI 3.0: the package's dependency, pinned by constraints.txt; the image checks it after the install
    assert "nni==3.0" in pyproject["project"]["dependencies"]
    assert "nni==3.0" in (ROOT / "constraints.txt").read_text().split()
    assert any("nni.__version__ == '3.0'" in run and "nni_sparsemask.comparison.trial" in run for run in runs)
    # the README's build command tags the image the two Kubernetes templates name
    for name in ("kubeflow.yml", "frameworkcontroller.yml"):
        images = re.findall(r"dockerImage:\s*(\S+)", (EXPERIMENTS / name).read_text())
        assert images and all(f"docker build -f experiments/Dockerfile -t {image} ." in readme for image in images)


def test_paper_config_needs_the_voc_root_before_launching():
    from nni_sparsemask.comparison.compare import load_config, plan_comparison

    config = load_config(EXPERIMENTS / "comparison.yml")  # NNI accepts it; the data set is the comparison's check
    assert config.trial_gpu_number == 1
    with pytest.raises(FileNotFoundError, match=r"/path/to/voc.*--data-root"):
        plan_comparison(config, "comparison.yml")


def _space(name):
    return json.loads((EXPERIMENTS / name).read_text())


@pytest.mark.parametrize("name", ["search_space_quick.json", "search_space.json"])
def test_search_spaces_cover_every_strategy_and_decoder(name):
    entries = trial.check_search_space(_space(name))
    methods = {e.method for e in entries}
    # the quick grid leaves out DeepLabV3 (MobileNetV2 only) and the segmentation_models_pytorch peers (the
    # quick CPU grid stays at 28 trials; the paper grid has them)
    peers = {d for d in DECODERS if d.startswith("smp-")}
    decoders = set(DECODERS) - ({"deeplabv3", *peers} if name == "search_space_quick.json" else set())
    assert methods == set(STRATEGIES) | decoders
    assert sorted({e.params["lambda_sparse"] for e in entries if e.method == "l1"}) == [0.001, 0.005, 0.01]
    assert sorted({e.params["k"] for e in entries if e.method == "maskconnect"}) == [2, 3, 4, 5]
    seeds = {e.seed for e in entries}
    assert len(seeds) >= 2
    for method in methods:  # every entry with every seed
        assert {e.seed for e in entries if e.method == method} == seeds
    assert len({e.key for e in entries}) == len(entries)


# ------------------------------------------------------------------------------------------------ entries
def test_parse_entry_nested_and_flat_forms():
    e = trial.parse_entry({"params": {"_name": "maskconnect", "k": 3}, "seed": 1})
    assert (e.method, e.kind, e.params, e.seed) == ("maskconnect", "oneshot", {"k": 3, "seed": 1}, 1)
    assert e.key == "maskconnect_k=3_seed=1"
    flat = trial.parse_entry({"method": "l1", "lambda_sparse": 0.005})
    assert flat.params == {"lambda_sparse": 0.005, "threshold": 1e-3, "seed": 0}
    assert flat.key == "l1_lambda_sparse=0.005_threshold=0.001_seed=0"
    r = trial.parse_entry({"params": {"_name": "random", "sample": 2}, "seed": 0})
    assert r.kind == "sampler" and r.sample == 2 and r.strategy_args == {"samples": 8, "density": 0.5, "seed": 0}
    d = trial.parse_entry({"params": {"_name": "fcn"}, "seed": 2})
    assert (d.kind, d.params, d.key) == ("decoder", {}, "fcn_seed=2")


@pytest.mark.parametrize("parameters,match", [
    ({"params": {"_name": "nope"}, "seed": 0}, r"unknown method 'nope'; known: strategies .*maskconnect.*fcn"),
    ({"params": {"_name": "sparsemask", "k": 3}, "seed": 0}, r"does not accept 'k' \(it belongs to maskconnect\)"),
    ({"params": {"_name": "maskconnect", "k": 0}, "seed": 0}, r"'k' of strategy 'maskconnect' must be in"),
    ({"params": {"_name": "fcn", "k": 2}, "seed": 0}, "takes no hyper-parameters"),
    ({"params": {"_name": "random", "sample": 8}, "seed": 0}, r"'sample' of 'random' must be .*samples=8"),
    ({"params": {"_name": "l1", "seed": 3}}, "grid's 'seed'"),
    ({"params": {"_name": "fcn"}, "seed": -1}, "seed"),
    ({"seed": 0}, "name no method"),
    ([1, 2], "must be an object"),
])
def test_parse_entry_errors(parameters, match):
    with pytest.raises(ValueError, match=match):
        trial.parse_entry(parameters)


def test_check_search_space_errors():
    with pytest.raises(ValueError, match=r"entry .*nope.*unknown method"):
        trial.check_search_space({"params": {"_type": "choice", "_value": [{"_name": "nope"}]}})
    with pytest.raises(ValueError, match="'choice' parameters only"):
        trial.check_search_space({"seed": {"_type": "uniform", "_value": [0, 1]},
                                  "params": {"_type": "choice", "_value": [{"_name": "fcn"}]}})
    with pytest.raises(ValueError, match="are the same run"):
        trial.check_search_space({"params": {"_type": "choice", "_value": [
            {"_name": "l1"}, {"_name": "l1", "lambda_sparse": {"_type": "choice", "_value": [0.001]}}]}})
    with pytest.raises(ValueError, match="must be"):
        trial.check_search_space({"params": [1, 2]})


def test_settings_presets_overrides_and_errors(tmp_path):
    s = trial.preset_settings("quick", {"data": {"image_size": 48}, "retrain_epochs": 2})
    assert s.data.image_size == 48 and s.data.train_scenes == trial.PRESETS["quick"]["data"]["train_scenes"]
    assert s.retrain_epochs == 2 and s.model.backbone == "convnet"
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        trial.preset_settings("huge")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['epochs'\]"):
        trial.preset_settings("quick", {"epochs": 3})
    with pytest.raises(ValueError, match="retrain_epochs must be an integer >= 1"):
        trial.preset_settings("quick", {"retrain_epochs": 0})
    with pytest.raises(ValueError, match="--data-root"):
        trial.preset_settings("paper")
    args = trial.build_parser().parse_args(["--preset", "paper", "--data-root", "/d/voc", "--sbd-root", "/d/sbd"])
    paper = trial.settings_from_args(args)
    assert (paper.data.root, paper.data.sbd_root, paper.model.backbone) == ("/d/voc", "/d/sbd", "mobilenet_v2")
    file = tmp_path / "s.json"
    file.write_text(json.dumps({"fps_size": 64}))
    assert trial.settings_from_args(trial.build_parser().parse_args(["--settings", str(file)])).fps_size == 64
    with pytest.raises(FileNotFoundError, match="--settings file not found"):
        trial.settings_from_args(trial.build_parser().parse_args(["--settings", str(tmp_path / "no.json")]))
    with pytest.raises(ValueError, match="not valid JSON"):
        trial.settings_from_args(trial.build_parser().parse_args(["--settings", "{oops"]))


# ------------------------------------------------------------------------------------------------ the trial
class FakeChannel:
    """Stands for NNI's trial command channel: hands out one parameter set, records the metrics."""

    def __init__(self, parameters):
        self.parameters, self.metrics = parameters, []

    def receive_parameter(self):
        return {"parameter_id": 7, "parameter_source": "algorithm", "parameters": self.parameters,
                "parameter_index": 0}

    def send_metric(self, type, parameter_id, trial_job_id, sequence, value):  # noqa: A002
        assert parameter_id == 7
        self.metrics.append((type, sequence, json.loads(json.dumps(value))))

    def of(self, kind):
        return [value for t, _, value in self.metrics if t == kind]


@pytest.fixture
def nni_trial(monkeypatch):
    """``install(parameters)`` -> a FakeChannel as NNI's default trial channel (NNI's state restored after)."""
    import nni.runtime.trial_command_channel as channels
    import nni.trial
    from nni.runtime.trial_command_channel import TrialCommandChannel

    monkeypatch.setattr(nni.trial, "_params", None)
    monkeypatch.setattr(nni.trial, "_intermediate_seq", 0)
    monkeypatch.setattr(channels, "_channel", None)

    for name, value in {"NNI_PLATFORM": "local", "NNI_EXP_ID": "exp123ab", "NNI_TRIAL_JOB_ID": "Ab1cD"}.items():
        monkeypatch.setenv(name, value)  # NNI's trial environment: main() asks NNI for the parameters

    def install(parameters):
        fake = type("Fake", (FakeChannel, TrialCommandChannel), {})(parameters)
        channels.set_default_trial_command_channel(fake)
        monkeypatch.setattr(nni.trial, "_params", None)
        monkeypatch.setattr(nni.trial, "_intermediate_seq", 0)
        return fake

    return install


def _main(results, *extra):
    return trial.main(["--results", str(results), "--settings", json.dumps(TINY), *extra])


def test_trial_runs_one_entry_reports_and_reuses_it(tmp_path, nni_trial):
    parameters = {"params": {"_name": "sparsemask", "lambda_sparse": 0.01}, "seed": 0}
    channel = nni_trial(parameters)
    assert _main(tmp_path / "runs") == 0
    entry_dir = tmp_path / "runs" / "sparsemask_lambda_sparse=0.01_threshold=0.001_seed=0"
    metrics_path = entry_dir / "retrain" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    assert metrics["method"] == "sparsemask" and metrics["seed"] == 0 and 0 <= metrics["miou"] <= 1
    assert metrics["params"] == {"lambda_sparse": 0.01, "threshold": 0.001, "seed": 0}
    assert (entry_dir / "search" / "connectivity.json").is_file() and (entry_dir / "config.json").is_file()
    assert not (entry_dir / "error.txt").exists()
    # one intermediate result per validation epoch of the retraining (the search, run in a process of its own,
    # reports nothing to the trial), one final result: the trial's own; all with the trial's parameter id (7)
    assert len(channel.of("PERIODICAL")) == 1 and "phase" not in channel.of("PERIODICAL")[0]
    assert [seq for t, seq, _ in channel.metrics if t == "PERIODICAL"] == [0]
    (final,) = channel.of("FINAL")
    assert final["default"] == pytest.approx(metrics["miou"])
    assert final["fps"] == pytest.approx(metrics["fps"]) and final["params_decoder"] == metrics["params_decoder"]
    assert final["edges"] == metrics["edges"] and final["reused"] is False
    assert Path(final["run_dir"]) == metrics_path.parent.resolve()

    # the same entry again (a rerun, or NNI handing it out twice): the result is reused, nothing is trained
    stamp = metrics_path.stat().st_mtime_ns
    again = nni_trial(parameters)
    assert _main(tmp_path / "runs") == 0
    assert again.of("PERIODICAL") == []
    (final2,) = again.of("FINAL")
    assert final2["reused"] is True and final2["default"] == final["default"]
    assert metrics_path.stat().st_mtime_ns == stamp

    # the report reads the entry's run directory
    from nni_sparsemask.analysis import load_results
    df = load_results(tmp_path / "runs")
    assert list(df["family"]) == ["SparseMask"] and df["miou"].iloc[0] == pytest.approx(metrics["miou"])


def test_trial_refuses_other_settings_for_an_existing_entry(tmp_path):
    entry = trial.parse_entry({"params": {"_name": "random"}, "seed": 0})
    settings = tiny_settings()
    (tmp_path / entry.key).mkdir()
    config = {"command": "comparison-entry", "method": "random", "params": entry.params, "seed": 0,
              "entry": entry.key, "settings": trial.preset_settings("quick", {**TINY, "fps_size": 64}).to_dict()}
    (tmp_path / entry.key / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="was run with other settings.*another --results"):
        trial.run_entry(entry, settings, tmp_path, log=quiet)


def test_failing_entry_raises_without_touching_other_run_dirs(tmp_path, monkeypatch, capsys):
    import nni_sparsemask.run.steps as workflow

    results = tmp_path / "runs"
    other = results / "unet_seed=0" / "retrain"
    other.mkdir(parents=True)
    (other / "metrics.json").write_text(json.dumps({"method": "unet", "miou": 0.5}))
    (other.parent / "config.json").write_text("{}")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in results.rglob("*") if p.is_file()}

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("simulated out of memory")

    monkeypatch.setattr(workflow, "train_network", out_of_memory)
    parameters = {"params": {"_name": "rand_rule", "sample": 1}, "seed": 3}
    entry = trial.parse_entry(parameters)
    with pytest.raises(RuntimeError, match="simulated out of memory"):
        trial.run_entry(entry, tiny_settings(), results, log=quiet)
    failed = results / "rand_rule_density=0.5_sample=1_samples=8_seed=3"
    assert "simulated out of memory" in (failed / "error.txt").read_text()
    assert not (failed / "retrain" / "metrics.json").exists()
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before}
    assert after == before  # the other entry is untouched
    assert {p.relative_to(results).parts[0] for p in results.rglob("*") if p.is_file()} == \
           {"unet_seed=0", failed.name, ".locks"}

    # a new trial of the same entry (here from the command line, outside NNI: no reporting) finishes it
    monkeypatch.undo()
    assert _main(results, "--params", json.dumps(parameters)) == 0
    assert "mIoU" in capsys.readouterr().out
    metrics = json.loads((failed / "retrain" / "metrics.json").read_text())
    assert not (failed / "error.txt").exists()
    assert metrics["params"]["sample"] == 1 and metrics["seed"] == 3
    used = json.loads((failed / "retrain" / "connectivity.json").read_text())
    sampled = json.loads((failed / "search" / "samples" / "sample-01.json").read_text())
    assert used["edges"] == sampled["edges"]  # the sample the entry names was retrained


def test_trial_main_errors_are_one_line(tmp_path, capsys):
    assert _main(tmp_path, "--params", json.dumps({"params": {"_name": "nope"}})) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparsemask trial: error: unknown method 'nope'") and "\n" not in err
    assert trial.main(["--preset", "huge", "--params", "{}"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
