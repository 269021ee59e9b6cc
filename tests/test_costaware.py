"""The cost-aware search: the budget penalty (by hand), the strategy's cost term on a toy space, and the run layer's
--cost / --target-fps / --budget (targets, tables, bad input before anything is written)."""
import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from nni_sparsemask.nas.losses import budget_penalty, kept_cost
from nni_sparsemask.run.config import DataConfig, ModelConfig, SearchConfig

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelConfig(backbone="convnet", backbone_kwargs={"widths": [4, 6, 8, 10, 12]}, backbone_weights=None,
                    decoder_channels=4)
DATA = DataConfig(image_size=32, train_scenes=32, val_scenes=8, batch_size=8)
QUIET = dict(progress=False, log=lambda s: None, accelerator="cpu")


def _toy():
    spec = importlib.util.spec_from_file_location("search_recipe", ROOT / "benchmarks" / "search_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NNI_SPARSEMASK_CACHE_DIR", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------------------ the loss
def test_budget_penalty_by_hand():
    assert budget_penalty(torch.tensor(3.0), 2.0).item() == pytest.approx(0.5)
    assert budget_penalty(torch.tensor(1.0), 2.0).item() == 0.0
    c = torch.tensor(4.0, requires_grad=True)
    budget_penalty(c, 2.0).backward()
    assert c.grad.item() == pytest.approx(0.5)  # d/dC (C / B - 1) = 1 / B
    c = torch.tensor(1.0, requires_grad=True)
    budget_penalty(c, 2.0).backward()
    assert c.grad.item() == 0.0  # within budget: no pull at all


@pytest.mark.parametrize("budget", [0, -1.0, float("nan"), True])
def test_budget_penalty_refuses_bad_budgets(budget):
    with pytest.raises(ValueError, match="budget must be a finite number > 0"):
        budget_penalty(torch.tensor(1.0), budget)


def test_strategy_needs_cost_fn_and_budget_together():
    from nni_sparsemask.nas.strategy import SparseMask

    with pytest.raises(ValueError, match="needs both cost_fn"):
        SparseMask(cost_budget=1.0)
    with pytest.raises(ValueError, match="needs both cost_fn"):
        SparseMask(cost_fn=lambda w: sum(v.sum() for v in w.values()))
    with pytest.raises(ValueError, match="cost_budget must be None"):
        SparseMask(cost_fn=lambda w: 0, cost_budget=-1.0)


def test_kept_cost_is_the_pruned_cost_with_the_expected_gradient():
    costs = torch.tensor([10.0, 1.0, 1.0])
    w = {"a": torch.tensor([0.2, 0.0005, 0.9], requires_grad=True)}
    c = kept_cost(lambda w: (w["a"] * costs).sum(), w, 1e-3)
    assert c.item() == pytest.approx(11.0)  # inputs 0 and 2 are kept (w > sigma)
    c.backward()
    assert w["a"].grad.tolist() == pytest.approx(costs.tolist())  # the gradient of sum c_i w_i


def test_cost_term_moves_the_search_off_an_expensive_input():
    """Toy space (``benchmarks/search_recipe.py``): inputs 0 and 3 carry the class, and the default search keeps
    exactly {0, 3} (``test_recipe``). When input 0 costs 10 and the others 1, with a budget of 3, the search drops
    input 0 and the kept inputs fit the budget. (With the expected cost alone as the value, w_0 settled at 0.2,
    where 10 w_0 + 1 meets the budget, and pruning kept input 0: a network costing 11.)"""
    toy = _toy()
    costs = torch.tensor([10.0, 1, 1, 1, 1, 1])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        aware = toy.search(0, cost_fn=lambda w: (w["inputs"] * costs).sum(), cost_budget=3.0, cost_weight=1.0)
    finally:
        torch.set_num_threads(threads)
    kept = aware.export()["inputs"]
    assert 0 not in kept and 3 in kept, aware.weights()
    assert sum(costs[i].item() for i in kept) <= 3.0
    assert aware.expected_cost() <= 3.0


# ------------------------------------------------------------------------------------------------ the run layer
@pytest.mark.parametrize("kwargs,match", [
    ({"cost": "energy", "budget": 0.5}, "unknown search cost 'energy'"),
    ({"cost": "bytes", "target_fps": 30.0}, "--target-fps is a latency target"),
    ({"cost": "latency"}, "exactly one of a target FPS"),
    ({"cost": "latency", "target_fps": 30.0, "budget": 0.5}, "exactly one of a target FPS"),
    ({"cost": "latency", "target_fps": 0.0}, "target_fps must be a finite number > 0"),
    ({"cost": "latency", "target_fps": -5.0}, "target_fps must be a finite number > 0"),
    ({"cost": "flops", "budget": 1.0}, "budget is a fraction"),
    ({"cost": "latency", "speedup": 1.0}, r"speedup is a multiple of the dense FDN's speed, above 1; got 1.0"),
    ({"cost": "bytes", "speedup": -2.0}, "speedup must be a finite number > 0"),
    ({"cost": "latency", "speedup": 2.0, "budget": 0.5}, "exactly one of a target FPS"),
    ({"speedup": 2.0}, "need a cost"),
    ({"budget": 0.5}, "need a cost"),
    ({"cost_table": "t.json"}, "need a cost"),
    ({"epochs": 4, "arc_warmup_epochs": 4}, r"arc_warmup_epochs must be an integer in \[0, epochs\) = \[0, 4\)"),
    ({"arc_warmup_epochs": -1}, "arc_warmup_epochs must be an integer"),
    ({"arc_warmup_epochs": 1.5}, "arc_warmup_epochs must be an integer"),
])
def test_search_config_refuses_bad_cost_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SearchConfig(**kwargs)


def _search(tmp_path, name, **schedule):
    from nni_sparsemask.run.steps import run_search

    cfg = SearchConfig(epochs=1, learning_rate=0.01, cost_size=32, **schedule)
    return run_search(tmp_path / name, "sparsemask", {}, DATA, MODEL, cfg, **QUIET)


def test_a_target_above_fcn_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"above what the fastest decoder of this space reaches: FCN is predicted"):
        _search(tmp_path, "run", cost="latency", target_fps=1e9)
    assert not (tmp_path / "run").exists()


def test_a_speedup_fcn_does_not_reach_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"--speedup 50 is not below what the fastest decoder of this space reaches: "
                                         r"FCN is predicted at [0-9.]+x the dense FDN \(flops at 32px"):
        _search(tmp_path, "run", cost="flops", speedup=50.0)
    assert not (tmp_path / "run").exists()


def test_a_speedup_target_sets_the_decoder_budget_from_the_dense_fdn(tmp_path):
    # whole network at dense / S: the decoder gets dense / S - base, and the summary says the searched speed-up
    summary = _search(tmp_path, "run", cost="flops", speedup=1.05)
    cost = summary["cost"]
    dense, base = cost["predicted"]["dense"], cost["predicted"]["base"]
    assert cost["speedup"] == 1.05
    assert cost["decoder_budget"] == pytest.approx(dense / 1.05 - base)
    assert cost["searched_speedup"] == pytest.approx(dense / cost["searched"])
    assert (tmp_path / "run" / "config.json").is_file()


def test_a_table_made_for_another_size_is_refused(tmp_path):
    from nni_sparsemask.run.costaware import profile_model

    _, path, _ = profile_model(MODEL, DATA.num_classes, "flops", 64, "cpu", str(tmp_path / "t64.json"))
    with pytest.raises(ValueError, match=r"made for another setting \(input_size: table \[64, 64\], wanted \[32, 32\]"):
        _search(tmp_path, "run", cost="flops", budget=0.5, cost_table=str(path))
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="does not accept|samples decoders without training w"):
        from nni_sparsemask.run.steps import run_search
        run_search(tmp_path / "rand", "random", {}, DATA, MODEL, SearchConfig(cost="flops", budget=0.5), **QUIET)


def test_cost_aware_search_records_its_budget_and_prediction(tmp_path):
    summary = _search(tmp_path, "run", cost="flops", budget=0.4)
    cost = summary["cost"]
    assert cost["cost"] == "flops" and cost["budget_fraction"] == pytest.approx(0.4)
    assert cost["predicted"]["fcn"] < cost["predicted"]["dense"]
    assert cost["decoder_budget"] == pytest.approx(0.4 * (cost["predicted"]["dense"] - cost["predicted"]["base"]))
    assert cost["expected_decoder_cost"] > 0 and cost["searched"] >= cost["predicted"]["base"]
    written = json.loads((tmp_path / "run" / "config.json").read_text())["search"]
    assert (written["cost"], written["budget"]) == ("flops", 0.4)
    strategy_config = json.loads((tmp_path / "run" / "search" / "sparsemask_strategy.json").read_text())["config"]
    assert strategy_config["cost_budget"] == pytest.approx(cost["decoder_budget"])


def test_profile_command_writes_a_table_and_refuses_to_overwrite(tmp_path, capsys):
    from nni_sparsemask.cli import main

    out = tmp_path / "table.json"
    args = ["profile", "--kind", "bytes", "--size", "32", "--backbone-kwargs", '{"widths": [4, 6, 8, 10, 12]}',
            "--decoder-channels", "4", "--image-size", "32", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "dense FDN" in printed and "FCN" in printed and out.is_file()
    before = out.read_text()
    assert main(args) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and out.read_text() == before


def test_grid_entries_can_be_cost_aware_points():
    from nni_sparsemask.comparison.grid import parse_entry
    from nni_sparsemask.run.registry import build_strategy, split_search_params

    entry = parse_entry({"params": {"_name": "sparsemask", "cost": "latency", "target_fps": 150}, "seed": 1})
    assert entry.params == {"lambda_sparse": 0.01, "threshold": 1e-3, "seed": 1, "cost": "latency",
                            "target_fps": 150.0}
    assert "cost=latency" in entry.key and "target_fps=150" in entry.key
    assert split_search_params("sparsemask", entry.params)[1] == {"cost": "latency", "target_fps": 150.0}
    plain = parse_entry({"params": {"_name": "sparsemask"}, "seed": 0})
    assert plain.key == "sparsemask_lambda_sparse=0.01_threshold=0.001_seed=0"  # unchanged by the cost options
    with pytest.raises(ValueError, match="--target-fps is a latency target"):
        parse_entry({"params": {"_name": "sparsemask", "cost": "flops", "target_fps": 150}, "seed": 0})
    with pytest.raises(ValueError, match="must be one of latency, bytes, flops"):
        parse_entry({"params": {"_name": "sparsemask", "cost": "energy", "budget": 0.5}, "seed": 0})
    with pytest.raises(ValueError, match="set the run's search"):
        build_strategy("sparsemask", {"cost": "flops", "budget": 0.5})


def test_an_interrupted_search_written_before_the_new_settings_resumes(tmp_path):
    """A run directory whose config.json predates the w and cost settings resumes when the search runs as those
    searches did (SEARCH_LEGACY), and is refused with any other setting."""
    from nni_sparsemask.run.config import SEARCH_LEGACY
    from nni_sparsemask.run.rundir import RunDir

    old_search = {"epochs": 2, "learning_rate": 0.01, "arc_learning_rate": 0.02}
    run = tmp_path / "old"
    RunDir(run, {"command": "search", "search": old_search}).close()
    legacy = {"search": SEARCH_LEGACY}
    same = dict(old_search, **SEARCH_LEGACY)
    assert RunDir(run, {"command": "search", "search": same}, resume=True, legacy=legacy).resumed
    with pytest.raises(ValueError, match="another configuration"):
        RunDir(run, {"command": "search", "search": dict(same, arc_optimizer="shared")}, resume=True, legacy=legacy)


def test_a_grid_point_sets_the_cost_weight_and_a_warmup_of_its_search():
    from nni_sparsemask.comparison.grid import parse_entry
    from nni_sparsemask.run.registry import split_search_params

    entry = parse_entry({"params": {"_name": "sparsemask", "cost": "latency", "budget": 0.4, "cost_weight": 0.3,
                                    "arc_warmup_epochs": 1}, "seed": 2})
    strategy_args, search = split_search_params("sparsemask", entry.params)
    assert search == {"cost": "latency", "budget": 0.4, "cost_weight": 0.3, "arc_warmup_epochs": 1}
    assert "cost_weight" not in strategy_args and "arc_warmup_epochs" not in strategy_args
    schedule = dataclasses.replace(SearchConfig(epochs=4), **search)
    assert schedule.strategy_options()["warmup_epochs"] == 1 and schedule.cost_weight == 0.3
    with pytest.raises(ValueError, match="arc_warmup_epochs"):
        parse_entry({"params": {"_name": "sparsemask", "arc_warmup_epochs": -1}, "seed": 0})


def test_a_search_reads_the_latency_table_of_the_threads_its_network_will_run_with(tmp_path):
    """The demo searches on half the threads while a second process retrains (``run.sideprocess``): the latency
    table it reads is the one timed for the FPS table's threads (``cost_threads``), not for the search's own."""
    from nni_sparsemask.measure.latency import device_name
    from nni_sparsemask.run.costaware import profile_model
    from nni_sparsemask.run.steps import run_search

    _, path, _ = profile_model(MODEL, DATA.num_classes, "flops", 32, "cpu", str(tmp_path / "t.json"))
    table = json.loads(path.read_text())  # stands in for a latency table timed with 7 threads (nothing timed)
    table["key"].update(kind="latency", device=device_name("cpu"), threads=7)
    path.write_text(json.dumps(table))
    assert torch.get_num_threads() != 7
    with pytest.raises(ValueError, match=r"made for another setting \(threads: table 7, wanted"):
        _search(tmp_path, "refused", cost="latency", budget=0.5, cost_table=str(path))
    assert not (tmp_path / "refused").exists()
    cfg = SearchConfig(epochs=1, learning_rate=0.01, cost_size=32, cost="latency", budget=0.5, cost_table=str(path))
    summary = run_search(tmp_path / "run", "sparsemask", {}, DATA, MODEL, cfg, cost_threads=7, **QUIET)
    assert summary["cost"]["budget_fraction"] == pytest.approx(0.5)


def test_the_demo_refuses_an_unreachable_target_before_pretraining_or_writing(tmp_path, monkeypatch, capsys):
    from nni_sparsemask.cli import main

    monkeypatch.setenv("NNI_SPARSEMASK_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--image-size", "32", "--fps-size", "32", "--decoder-channels", "8",
            "--cost", "flops", "--speedup", "50", "--no-progress"]
    assert main(argv) == 2
    assert "--speedup 50 is not below what the fastest decoder of this space reaches" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "cache" / "backbones").exists()
