"""Ablation of SparseMask's search recipe on a toy "user" space: does the search decide, and on the right inputs?

The space (:class:`UserSpace`) is what a user would write: six candidate branches (``Linear -> BatchNorm1d ->
ReLU``, BN with its affine parameters, as PyTorch makes it) summed by one ``InputChoice(6, n_chosen=None)``,
then a linear head; branches :data:`INFORMATIVE` see the class signal, the other four pure noise. The evaluator
is NNI's own ``Classification`` (Adam by default; ``--optimizer sgd`` gives it SGD with momentum 0.9).

Rows (``--rows``, names in :data:`ROWS`): the strategy's settings (every row not naming a setting has the
default: BN trained, L_s on w itself, init 0.5, lambda 0.01, sigma 1e-3); each runs ``--seeds`` seeds (seed s seeds
the data order, the network's initialisation and the strategy). Columns: the mean undecided fraction (w in
``(sigma, 0.999)`` at the end), the kept inputs of each seed, and how many seeds kept exactly the informative set.

    python benchmarks/search_recipe.py                       # every row, 8 seeds, 20 epochs, Adam 1e-3
    python benchmarks/search_recipe.py --optimizer sgd --lr 0.01 --rows default old
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
import warnings
from typing import Any

import torch

INFORMATIVE = [0, 3]
N_CANDIDATES = 6

#: the official recipe as its code has it: the defaults plus the two switches that are off by default
OFFICIAL = dict(noisy_penalty=True, freeze_bn=True)

#: row name -> (description, SparseMask keyword arguments)
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "old": ("old default: Adam 3e-3 on w, no noise",
            dict(arc_optimizer="adam", arc_learning_rate=3e-3, arc_weight_decay=0.0, arc_noise=0.0)),
    "default": ("default SparseMask(): shared optimizer, noise 0.05, wd 4e-5", {}),
    "official": ("official recipe: default + noisy penalty + frozen BN", OFFICIAL),
    "official_no_noise": ("official recipe without noise", dict(OFFICIAL, arc_noise=0.0)),
    "no_noise": ("default without noise", dict(arc_noise=0.0)),
    "no_wd": ("default without weight decay on w", dict(arc_weight_decay=0.0)),
    "noisy_penalty": ("default + L_s on the noisy w", dict(noisy_penalty=True)),
    "freeze_bn": ("default + frozen BN", dict(freeze_bn=True)),
    "mult1": ("default, w at 1x the evaluator's lr (arc_lr_mult=1)", dict(arc_lr_mult=1.0)),
    "adam02_noise": ("Adam 0.02 on w + noise 0.05", dict(arc_optimizer="adam", arc_learning_rate=0.02,
                                                         arc_weight_decay=0.0)),
}


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples of 6 x 4 features and 3 classes; branches 0 and 3 carry the class, the others noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, N_CANDIDATES, 4, generator=g)
    a, b = INFORMATIVE
    x[:, a, :] += 1.5 * torch.where(y == 0, 1.0, -1.0)[:, None]                        # class 0 vs the rest
    x[:, b, :] += 1.5 * torch.where(y == 1, 1.0, torch.where(y == 2, -1.0, 0.0))[:, None]  # class 1 vs 2
    return x.reshape(n, N_CANDIDATES * 4), y


def user_space():
    from nni.nas.nn.pytorch import InputChoice, ModelSpace
    from torch import nn

    class UserSpace(ModelSpace):
        def __init__(self):
            super().__init__()
            self.branches = nn.ModuleList([nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
                                           for _ in range(N_CANDIDATES)])
            self.inputs = InputChoice(N_CANDIDATES, n_chosen=None, reduction="sum", label="inputs")
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            xs = x.view(-1, N_CANDIDATES, 4)
            return self.head(self.inputs([b(xs[:, t]) for t, b in enumerate(self.branches)]))

    return UserSpace()


class MomentumSGD(torch.optim.SGD):
    """SGD with momentum 0.9, built as NNI's ``Classification`` builds its optimizer (``lr``, ``weight_decay``)."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def evaluator(seed: int, epochs: int, optimizer: str = "adam", lr: float = 1e-3, n_train: int = 2048,
              batch_size: int = 64):
    import nni
    from nni.nas.evaluator.pytorch import Classification, DataLoader

    td = nni.trace(torch.utils.data.TensorDataset)
    xtr, ytr = make_data(n_train, 1000 + seed)
    xva, yva = make_data(256, 2000 + seed)
    return Classification(
        learning_rate=lr, num_classes=3, optimizer=torch.optim.Adam if optimizer == "adam" else MomentumSGD,
        train_dataloaders=DataLoader(td(xtr, ytr), batch_size=batch_size, shuffle=True),
        val_dataloaders=DataLoader(td(xva, yva), batch_size=256),
        max_epochs=epochs, enable_progress_bar=False, logger=False, enable_checkpointing=False,
        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")


def search(seed: int, epochs: int = 20, optimizer: str = "adam", lr: float = 1e-3, n_train: int = 2048,
           **strategy_kwargs: Any):
    """One search on the toy space; returns the finished ``SparseMask`` strategy."""
    from nni.nas.experiment import NasExperiment

    from nni_sparsemask.nas.strategy import SparseMask

    torch.manual_seed(seed)
    space = user_space()
    strategy = SparseMask(seed=seed, **strategy_kwargs)
    exp = NasExperiment(space, evaluator(seed, epochs, optimizer, lr, n_train), strategy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp.run()
    return strategy


def run_row(name: str, seeds: int, epochs: int, optimizer: str, lr: float, n_train: int) -> dict[str, Any]:
    description, kwargs = ROWS[name]
    kept, undecided, weights = [], [], []
    t0 = time.perf_counter()
    for seed in range(seeds):
        strategy = search(seed, epochs, optimizer, lr, n_train, **kwargs)
        kept.append(strategy.export()["inputs"])
        undecided.append(strategy.binarization()["overall"]["undecided_fraction"])
        weights.append([round(v, 4) for v in strategy.weights()["inputs"]])
    return {"row": name, "description": description, "kwargs": kwargs, "kept": kept, "weights": weights,
            "undecided": sum(undecided) / len(undecided), "hits": sum(k == INFORMATIVE for k in kept),
            "seeds": seeds, "seconds": time.perf_counter() - t0}


def machine() -> str:
    return (f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__} on {torch.get_num_threads()} threads")


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| row | undecided fraction (mean) | kept inputs per seed | exactly {0, 3} |", "| --- | ---: | --- | ---: |"]
    for r in results:
        kept = " ".join("{" + ",".join(map(str, k)) + "}" for k in r["kept"])
        lines.append(f"| {r['description']} | {r['undecided']:.2f} | {kept} | {r['hits']}/{r['seeds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="the evaluator's optimizer")
    p.add_argument("--lr", type=float, default=1e-3, help="the evaluator's learning rate")
    p.add_argument("--n-train", type=int, default=2048)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # a tiny network: one thread is fastest, and leaves the other cores alone
    import nni.nas.experiment  # noqa: F401  (NNI sets its loggers up on import: quiet them after it)
    logging.getLogger("nni").setLevel(logging.ERROR)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    results = []
    for name in args.rows:
        r = run_row(name, args.seeds, args.epochs, args.optimizer, args.lr, args.n_train)
        print(f"{name}: kept {r['kept']} hits {r['hits']}/{r['seeds']} undecided {r['undecided']:.2f} "
              f"w {r['weights']} ({r['seconds']:.0f} s)", flush=True)
        results.append(r)
    print(f"\nmachine: {machine()}")
    print(f"evaluator: NNI Classification, {args.optimizer} lr {args.lr}, {args.n_train} training samples, batch 64, "
          f"{args.epochs} epochs; {args.seeds} seeds\n")
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "args": vars(args), "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
