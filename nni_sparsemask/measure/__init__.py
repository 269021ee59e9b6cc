"""What a network scores and costs: segmentation / saliency / edge metrics, parameter counts, FPS, and the
machine-independent cost of a forward pass (operator calls, FLOPs, bytes), measured in the deployment form.

Modules, one idea each:

* :mod:`.segmentation` -- mIoU / per-class IoU / PixAcc from an accumulated confusion matrix;
* :mod:`.saliency` -- saliency max F-beta and MAE;
* :mod:`.edges` -- edge ODS / OIS / AP (the BSDS500 benchmark: thinning, one-to-one matching within 0.0075 of the diagonal);
* :mod:`.params` -- parameter counts split encoder + decoder, Table 1's ``"2.22+0.56M"`` form;
* :mod:`.fps` -- inference speed (FPS), as given or in the deployment form;
* :mod:`.deploy` -- the deployment form (BN folded, channels_last) that speed is measured in;
* :mod:`.cost` -- operator calls, FLOPs and bytes written per forward;
* :mod:`.latency` -- per-edge cost tables of the FDN decoder (timed or counted), what a cost-aware search uses;
* :mod:`.export` -- ONNX / TorchScript / exported-program files of a trained network, dynamic height and width;
* :mod:`.metrics` -- the pre-split path, re-exporting the names of the five metric modules above.

Names are imported lazily (``from nni_sparsemask.measure import measure_fps``): importing this package does no work.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "SegmentationMetrics": "segmentation", "SegmentationScores": "segmentation",
    "SaliencyMetrics": "saliency", "SaliencyScores": "saliency",
    "EdgeMetrics": "edges", "EdgeScores": "edges",
    "ParamCount": "params", "count_parameters": "params", "format_params": "params",
    "FPSResult": "fps", "measure_fps": "fps",
    "fold_bn": "deploy", "fold_conv_bn": "deploy", "fold_batchnorm": "deploy", "inference_form": "deploy",
    "as_measured": "deploy", "AS_GIVEN": "deploy", "INFERENCE_FORM": "deploy",
    "InferenceCost": "cost", "inference_cost": "cost",
    "CostTable": "latency", "profile_space": "latency", "load_cost_table": "latency",
    "FORMATS": "export", "export_network": "export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
