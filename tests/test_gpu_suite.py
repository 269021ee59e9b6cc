"""benchmarks/gpu_suite.py: the --quick CPU smoke run fills every section with numbers and appends (never
overwrites); without a GPU the full run is refused in one line. Its GPU numbers are measured elsewhere."""
import importlib.util
import re
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"^\d+(\.\d+)?$")

pytestmark = pytest.mark.usefixtures("isolated_cache")


def _load():
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "benchmarks" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table(text: str, heading: str) -> list[list[str]]:
    """The rows (cells) of the first Markdown table after ``heading``."""
    section = text.split(heading, 1)[1]
    lines = [ln for ln in section.split("\n###", 1)[0].splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def test_quick_run_has_numbers_in_every_section_and_appends(tmp_path, capsys):
    out = tmp_path / "suite.md"
    out.write_text("# results\n\n## an earlier section\n\nkept as it is\n")
    result = _load().main(["--quick", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("# results\n\n## an earlier section\n\nkept as it is\n\n## GPU suite --quick")
    assert text.count("## GPU suite") == 1 and f"torch {torch.__version__}" in text

    table1 = _table(text, "### Table 1 in form")
    names = [row[0] for row in table1]
    assert names[:6] == ["FCN", "DeepLab-V3 (mobile)", "U-Net", "SparseACN", "FDN (dense)",
                         "Ours (paper's searched decoder)"]
    if find_spec("segmentation_models_pytorch") is not None:
        assert {"U-Net (smp)", "FPN (smp)", "DeepLabV3+ (smp)", "PAN (smp)", "Linknet (smp)"} <= set(names)
    for row in table1:  # decoder params, then fp32, fp32 CL, AMP, AMP CL: numbers for every network
        assert row[1].endswith("M") and float(row[1][:-1]) > 0
        assert all(NUMBER.match(c) for c in row[2:6]), row
    assert NUMBER.match(table1[0][6]), table1[0]  # torch.compile (eager backend in --quick) on the first network
    if find_spec("onnxruntime") is not None and find_spec("onnxscript") is not None:
        assert NUMBER.match(table1[0][7]), table1[0]  # ONNX Runtime (CPU in --quick)
    assert table1[1][6] == "skipped (--quick)"

    table2 = _table(text, "### Table 2 in form")
    assert [(r[0], r[1]) for r in table2] == [("MobileNetV2 0.35", "efficient"), ("MobileNetV2 0.35", "naive"),
                                              ("ResNet-18", "efficient"), ("ResNet-18", "naive")]
    assert all(NUMBER.match(c) for r in table2 for c in (r[2], r[3], r[4], r[6]))
    features = {(r[0], r[1]): float(r[3]) for r in table2}
    assert features[("MobileNetV2 0.35", "efficient")] < features[("MobileNetV2 0.35", "naive")]
    assert "Features, efficient / naive: MobileNetV2 0.35 0." in text

    search = _table(text, "### Search cost")
    assert [r[0] for r in search] == ["dense FDN, L_task", "SparseMask search", "NNI 3.0 DARTS (DartsFDN)"]
    assert all(float(r[1]) > 0 for r in search)
    assert set(result["search"]["median"]) == {"fdn", "sparsemask", "darts"}


def test_without_a_gpu_the_full_run_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "suite.md"
    with pytest.raises(SystemExit) as err:
        _load().main(["--out", str(out)])
    message = str(err.value)
    assert "no CUDA device here: pass --quick" in message and "\n" not in message
    assert not out.exists()
    with pytest.raises(SystemExit, match="pass --out"):  # quick numbers never go into RESULTS.md
        _load().main(["--quick"])
