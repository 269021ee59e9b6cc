"""Strategy families: the names runs are grouped and plotted under, and the order Table 1 lists them in.

A run's ``method`` (and, where it matters, its hyper-parameters) decides its family::

    sparsemask                      -> "SparseMask"             (loss="binary"/"sparse"/"task"/"l1": see below)
    sparsemask-binary               -> "L_task + L_bp"          (Table 1 ablations of the sparse loss)
    sparsemask-sparse               -> "L_task + L_sp"
    sparsemask-task                 -> "FDN (L_task)"
    l1 / sparsemask-l1              -> "L1 lambda=X"            (X from lambda_l1, lambda or lambda_sparse)
    maskconnect                     -> "MaskConnect k=K"
    random / rand                   -> "Rand"
    rand_rule                       -> "Rand (Rule)"
    fcn, deeplabv3, unet, sparseacn, fdn  -> hand-designed decoders ("FCN", "DeepLab-V3", "U-Net", "SparseACN",
                                           "FDN (dense)")

Families fall into groups, listed in this order: ``hand-designed``, ``ablation`` (FDN trained with parts of
the loss), ``search`` (random, MaskConnect, L1, SparseMask last, as "Ours" is in Table 1), ``other`` (any method
this module does not know, under its own name).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["Family", "family_of", "GROUPS", "format_number"]

GROUPS = ("hand-designed", "ablation", "search", "other")

_HAND = {"fcn": "FCN", "deeplabv3": "DeepLab-V3", "unet": "U-Net", "sparseacn": "SparseACN", "fdn": "FDN (dense)"}
_ABLATION = {"task": "FDN (L_task)", "sparse": "L_task + L_sp", "binary": "L_task + L_bp"}
_LAMBDA_KEYS = ("lambda_l1", "lambda", "lambda_sparse", "strength")


@dataclass(frozen=True)
class Family:
    """A family: display ``name``, ``group`` (one of :data:`GROUPS`) and ``kind``, the colour/marker class.

    ``kind`` is what Fig. 4 gives one colour to: ``sparsemask``, ``rand``, ``rand_rule``, ``maskconnect``,
    ``l1``, ``hand``, ``ablation`` or ``other``; ``sort_key`` orders families within Table 1 and legends.
    """

    name: str
    group: str
    kind: str
    sort_key: tuple

    @property
    def order(self) -> tuple:
        return (GROUPS.index(self.group),) + self.sort_key + (self.name,)


def format_number(x: Any) -> str:
    """Short, stable text for a hyper-parameter value: 0.005 -> '0.005', 1e-05 -> '1e-05', 3.0 -> '3'."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return f"{x:g}"


def _num(params: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if params.get(k) is not None:
            return params[k]
    return None


def family_of(method: str, params: Mapping[str, Any] | None = None) -> Family:
    """The :class:`Family` of a run with ``method`` and hyper-parameters ``params``."""
    if not isinstance(method, str) or not method:
        raise ValueError(f"a run's method must be a non-empty string, got {method!r}")
    params = dict(params or {})
    m = method.strip().lower().replace("_", "-")
    if m == "sparsemask" and params.get("loss") not in (None, "sparsemask"):
        m = f"sparsemask-{params['loss']}"
    if m in ("sparsemask", "ours"):
        return Family("SparseMask", "search", "sparsemask", (9, 0.0))
    if m.startswith("sparsemask-") and m[len("sparsemask-"):] in _ABLATION:
        suffix = m[len("sparsemask-"):]
        return Family(_ABLATION[suffix], "ablation", "ablation", (list(_ABLATION).index(suffix), 0.0))
    if m in ("l1", "sparsemask-l1"):
        lam = _num(params, _LAMBDA_KEYS)
        name = "L1" if lam is None else f"L1 lambda={format_number(lam)}"
        return Family(name, "search", "l1", (4, _as_float(lam)))
    if m == "maskconnect":
        k = _num(params, ("k", "top_k"))
        name = "MaskConnect" if k is None else f"MaskConnect k={format_number(k)}"
        return Family(name, "search", "maskconnect", (3, _as_float(k)))
    if m in ("random", "rand"):
        return Family("Rand", "search", "rand", (1, 0.0))
    if m in ("rand-rule", "random-rule"):
        return Family("Rand (Rule)", "search", "rand_rule", (2, 0.0))
    key = m.replace("-", "")
    if key in _HAND:
        return Family(_HAND[key], "hand-designed", "hand", (list(_HAND).index(key), 0.0))
    return Family(method, "other", "other", (0, 0.0))


def _as_float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return 0.0
