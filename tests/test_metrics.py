"""The layout of :mod:`nni_sparsemask.measure`: the pre-split path ``measure.metrics`` re-exports every name of the
metric modules (the same objects), and the package exports them lazily. The metrics themselves are tested in
``test_metrics_segmentation.py``, ``test_metrics_saliency.py``, ``test_metrics_edges.py`` and
``test_metrics_size_speed.py``."""
import importlib
import subprocess
import sys

import pytest

import nni_sparsemask.measure as measure
from nni_sparsemask.measure import metrics

OLD_NAMES = ["SegmentationMetrics", "SegmentationScores", "SaliencyMetrics", "SaliencyScores", "EdgeMetrics",
             "EdgeScores", "ParamCount", "count_parameters", "format_params", "FPSResult", "measure_fps",
             "INFERENCE_FORM"]


def test_metrics_reexports_every_old_name_from_its_module():
    assert sorted(metrics.__all__) == sorted(OLD_NAMES)
    for name in OLD_NAMES:
        home = importlib.import_module(f"nni_sparsemask.measure.{measure._EXPORTS[name]}")
        assert getattr(metrics, name) is getattr(home, name), name
    from nni_sparsemask.measure.metrics import SegmentationMetrics, measure_fps  # noqa: F401  the old import form


def test_package_exports_lazily():
    for name in measure.__all__:
        module = importlib.import_module(f"nni_sparsemask.measure.{measure._EXPORTS[name]}")
        assert getattr(measure, name) is getattr(module, name), name
        assert name in getattr(module, "__all__"), f"{name} is not public in {module.__name__}"
    assert set(OLD_NAMES) <= set(measure.__all__)
    with pytest.raises(AttributeError, match="no_such_name"):
        measure.no_such_name


def test_importing_the_package_imports_no_submodule():
    code = ("import sys, nni_sparsemask.measure as m; "
            "print(sorted(k for k in sys.modules if k.startswith('nni_sparsemask.measure.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
