"""Evaluation metrics under their pre-split module path (``from nni_sparsemask.measure.metrics import X``).

Each idea lives in its own module now; this one re-exports all of their public names (the same objects):

* :mod:`.segmentation` -- :class:`SegmentationMetrics`, :class:`SegmentationScores` (mIoU, per-class IoU, PixAcc);
* :mod:`.saliency` -- :class:`SaliencyMetrics`, :class:`SaliencyScores` (max F-beta, MAE);
* :mod:`.edges` -- :class:`EdgeMetrics`, :class:`EdgeScores` (ODS / OIS / AP, the BSDS500 benchmark);
* :mod:`.params` -- :class:`ParamCount`, :func:`count_parameters`, :func:`format_params`;
* :mod:`.fps` -- :class:`FPSResult`, :func:`measure_fps`;
* :mod:`.deploy` -- ``INFERENCE_FORM``, the name of the form ``measure_fps(inference=True)`` times.
"""
from __future__ import annotations

from nni_sparsemask.measure.deploy import INFERENCE_FORM
from nni_sparsemask.measure.edges import EdgeMetrics, EdgeScores
from nni_sparsemask.measure.fps import FPSResult, measure_fps
from nni_sparsemask.measure.params import ParamCount, count_parameters, format_params
from nni_sparsemask.measure.saliency import SaliencyMetrics, SaliencyScores
from nni_sparsemask.measure.segmentation import SegmentationMetrics, SegmentationScores

__all__ = [
    "SegmentationMetrics",
    "SegmentationScores",
    "SaliencyMetrics",
    "SaliencyScores",
    "EdgeMetrics",
    "EdgeScores",
    "ParamCount",
    "count_parameters",
    "format_params",
    "FPSResult",
    "measure_fps",
    "INFERENCE_FORM",
]
