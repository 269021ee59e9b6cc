"""Cost of one search epoch: SparseMask vs training the dense FDN vs NNI's DARTS, on the same FDN space and data.

Three runs on the same DigitScenes scenes (same backbone, decoder width, batch size and number of batches):

* ``fdn``: the dense FDN (every edge, no w, no per-edge BN) trained with L_task: ``build_pruned(dense)``;
* ``sparsemask``: the SparseMask strategy (joint optimisation: one forward/backward per batch for weights and w,
  per-edge BN, w clamped after each step) under ``NasExperiment``;
* ``darts``: NNI 3.0's own ``DARTS`` strategy (first order; it alternates an architecture step on a validation
  batch with a weight step on a training batch, and its input choices keep one input: ``n_chosen=1``). NNI's
  differentiable input choice only takes ``reduction="sum"|"mean"``, so DARTS runs on :class:`DartsFDN`: the same
  candidates and edges, each edge upsampled to the stage resolution before NNI's weighted sum (it cannot group
  edges of one source resolution before upsampling, as SparseMask's fusion does: part of DARTS' cost here).

Each run trains ``--epochs`` epochs; the time of an epoch is measured by a Lightning callback from the first
training batch to the end of the last (validation excluded); the reported value is the median over the epochs
after the first (the first holds one-off costs). Goals (issue 4): sparsemask / fdn <= 1.2, sparsemask / darts
<= 0.6. The runs are interleaved round-robin ``--repeats`` times so that a slow phase of a shared machine hits
all three alike.

    python benchmarks/search_cost.py                          # CPU, 64x64, 512 scenes
    python benchmarks/search_cost.py --device cuda --size 256 --scenes 2048 --backbone mobilenet_v2
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch


def _epoch_timer():
    import pytorch_lightning as pl

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.seconds: list[float] = []
            self._t0 = None

        def _sync(self, module):
            if torch.cuda.is_available() and module.device.type == "cuda":
                torch.cuda.synchronize()

        def on_train_epoch_start(self, trainer, module):
            self._sync(module)
            self._t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self._sync(module)
            self.seconds.append(time.perf_counter() - self._t0)

    return EpochTimer()


def _loaders(args):
    from nni_sparsemask.run.lightning import DigitScenesLoader

    common = dict(image_size=args.size, seed=0)
    train = DigitScenesLoader(batch_size=args.batch, shuffle=True, drop_last=True, split="train",
                              num_scenes=args.scenes, **common)
    val = DigitScenesLoader(batch_size=args.batch, drop_last=True, split="val", num_scenes=args.scenes, **common)
    return train, val


def _space(args):
    from nni_sparsemask.fdn.space import FDNSpace

    return FDNSpace(args.backbone, num_classes=11, decoder_channels=args.channels,
                    backbone_kwargs=json.loads(args.backbone_kwargs))


def _darts_space(args):
    from nni.nas.nn.pytorch import InputChoice

    from nni_sparsemask.fdn.connectivity import candidate_names
    from nni_sparsemask.fdn.fusion import resize_to
    from nni_sparsemask.fdn.space import FDNSpace

    class DartsFDN(FDNSpace):
        """FDNSpace whose input choices sum (NNI's DARTS refuses ``reduction="none"``)."""

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            for label, choice in list(self.choices.items()):
                self.choices[label] = InputChoice(choice.n_candidates, n_chosen=None, reduction="sum", label=label)

        def forward(self, x):
            size = [int(x.shape[-2]), int(x.shape[-1])]
            features, g = self.encoder(x)
            out = {f"E{i}": f for i, f in enumerate(features, start=1)}
            out["G"] = g
            for l in range(self.num_stages, 0, -1):
                label = f"D{l}"
                target = features[l - 1].shape[-2:]
                names = candidate_names(l, self.num_stages)
                out[label] = self.choices[label]([resize_to(e(out[n]), target)
                                                  for e, n in zip(self.edges[label], names)])
            return self.head(out["D1"], size)

    return DartsFDN(args.backbone, num_classes=11, decoder_channels=args.channels,
                    backbone_kwargs=json.loads(args.backbone_kwargs))


def _evaluator(args, timer):
    from nni_sparsemask.run.lightning import Segmentation

    train, val = _loaders(args)
    return Segmentation(num_classes=11, learning_rate=0.01, train_dataloaders=train, val_dataloaders=val,
                        max_epochs=args.epochs, accelerator=args.device, devices=1, enable_checkpointing=False,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=1, callbacks=[timer])


def run_fdn(args) -> list[float]:
    import pytorch_lightning as pl

    from nni_sparsemask.fdn.pruned import build_pruned
    from nni_sparsemask.run.lightning import SegmentationModule

    space = _space(args)
    net = build_pruned(space.dense_connectivity(), 11, args.channels, backbone_kwargs=json.loads(args.backbone_kwargs))
    module = SegmentationModule(num_classes=11, learning_rate=0.01)
    module.set_model(net)
    timer = _epoch_timer()
    train, val = _loaders(args)
    pl.Trainer(max_epochs=args.epochs, accelerator=args.device, devices=1, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1,
               callbacks=[timer]).fit(module, train, val)
    return timer.seconds


def _run_strategy(args, strategy, space) -> list[float]:
    from nni.nas.experiment import NasExperiment

    timer = _epoch_timer()
    NasExperiment(space, _evaluator(args, timer), strategy).run()
    return timer.seconds


def run_sparsemask(args) -> list[float]:
    from nni_sparsemask.nas.strategy import SparseMask

    return _run_strategy(args, SparseMask(arc_learning_rate=0.02), _space(args))


def run_darts(args) -> list[float]:
    from nni.nas.oneshot.pytorch.strategy import DARTS  # (nni.nas.strategy.DARTS: circular import after ours)

    return _run_strategy(args, DARTS(), _darts_space(args))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--scenes", type=int, default=512)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="round-robin repetitions of the three runs")
    p.add_argument("--backbone", default="convnet")
    p.add_argument("--backbone-kwargs", default='{"widths": [16, 32, 48, 64, 96]}')
    p.add_argument("--channels", type=int, default=32)
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch is left out)")
    return args


RUNS = {"fdn": run_fdn, "sparsemask": run_sparsemask, "darts": run_darts}


def measure(args: argparse.Namespace) -> dict:
    """The three runs of :data:`RUNS`, interleaved ``args.repeats`` times: ``{"epochs": {run: [s, ...]},
    "median": {run: s}, "device": str}`` (each run's first epoch left out)."""
    epochs: dict[str, list[float]] = {k: [] for k in RUNS}
    for _ in range(args.repeats):
        for name, fn in RUNS.items():
            epochs[name] += fn(args)[1:]
    med = {k: statistics.median(v) for k, v in epochs.items()}
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return {"epochs": epochs, "median": med, "device": device}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import logging
    logging.getLogger("nni").setLevel(logging.ERROR)

    result = measure(args)
    epochs, med, device, runs = result["epochs"], result["median"], result["device"], RUNS
    print(f"device: {device}; {args.backbone} {args.backbone_kwargs}, C_dec {args.channels}, {args.size}x{args.size}, "
          f"batch {args.batch}, {args.scenes // args.batch} batches per epoch, median of {len(epochs['fdn'])} epochs")
    for name in runs:
        print(f"  {name:<10} epoch {med[name]:8.3f} s   (epochs: {', '.join(f'{s:.2f}' for s in epochs[name])})")
    print(f"sparsemask / dense FDN epoch: {med['sparsemask'] / med['fdn']:.3f}   (goal <= 1.2)")
    print(f"sparsemask / DARTS epoch:     {med['sparsemask'] / med['darts']:.3f}   (goal <= 0.6)")


if __name__ == "__main__":
    main()
