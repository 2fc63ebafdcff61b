"""Scores, diagnostics and the printed summary of a run.

The unlabelled pool's hidden labels are used here, and only here, for diagnostics: they never reach
training or model selection.
"""

from __future__ import annotations

import math

import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from teli.labels import PseudoLabels


def test_scores(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    logits, y = logits.float().cpu(), y.cpu()
    return {
        "accuracy": float((logits.argmax(dim=1) == y).float().mean()),
        "ece": float(multiclass_calibration_error(logits.softmax(dim=1), y, num_classes=logits.shape[1], n_bins=15)),
    }


def _rate(mask: torch.Tensor, of: torch.Tensor | None = None) -> float:
    if of is not None:
        mask = mask[of]
    return float(mask.float().mean()) if mask.numel() else math.nan


def pseudo_label_diagnostics(labels: PseudoLabels, y_hidden: torch.Tensor | None) -> dict[str, float]:
    """Agreement/disagreement rates over the pool and, with hidden labels, pseudo-label accuracy."""
    out = {
        "pool_size": int(labels.confident.numel()),
        "confident_rate": _rate(labels.confident),
        "agreement_rate": _rate(labels.agree),
        "disagreement_rate": _rate(labels.disagree),
        "agreement_among_confident": _rate(labels.agree, labels.confident),
    }
    if y_hidden is None:
        return out
    y = y_hidden.to(labels.preds.device)
    right = labels.preds == y  # [N, U]
    out["pseudo_accuracy_agree"] = _rate(right[0], labels.agree)
    for i in range(right.shape[0]):
        out[f"teacher{i + 1}_right_on_disagree"] = _rate(right[i], labels.disagree)
    out["any_teacher_right_on_disagree"] = _rate(right.any(dim=0), labels.disagree)
    return out


def _pct(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"teli · {summary['dataset']} · {summary['labels_per_class']} labels/class · seed {summary['seed']}")
    table.add_column("model")
    table.add_column("architecture")
    table.add_column("test acc", justify="right")
    table.add_column("ECE", justify="right")
    for row in summary["models"]:
        table.add_row(row["name"], row["arch"], _pct(row["accuracy"]), f"{row['ece']:.3f}")
    console.print(table)
    diag = summary.get("pseudo_labels")
    if diag:
        parts = [f"agreement {_pct(diag['agreement_rate'])}", f"disagreement {_pct(diag['disagreement_rate'])}",
                 f"confident {_pct(diag['confident_rate'])} of {diag['pool_size']} unlabelled"]
        if "pseudo_accuracy_agree" in diag:
            teachers = sorted(k for k in diag if k.startswith("teacher") and k.endswith("_right_on_disagree"))
            per_teacher = ", ".join(f"T{k[7:k.index('_')]} {_pct(diag[k])}" for k in teachers)
            parts.append(f"pseudo-label acc on agree {_pct(diag['pseudo_accuracy_agree'])}")
            parts.append(f"on disagree: right {per_teacher}, any {_pct(diag['any_teacher_right_on_disagree'])}")
        console.print("pseudo-labels (hidden labels, diagnostics only): " + "; ".join(parts))
    lam = summary.get("lambda_head")
    if lam:
        skill = (f"AUC {lam['auc_teacher1_right']:.3f} for 'teacher 1 right' on {lam['decisive_count']} decisive disagreements"
                 if "auc_teacher1_right" in lam else
                 f"largest weight on a right teacher {_pct(lam['argmax_weight_right'])}" if "argmax_weight_right" in lam else "")
        console.print(f"lambda head on {lam['count']} disagreements: mean {lam['mean']:.2f}, std {lam['std']:.2f}"
                      + (f"; {skill}" if skill else ""))
    if "wall_seconds" in summary:
        wall = summary["wall_seconds"]
        console.print("wall time: " + ", ".join(f"{k} {v:.1f}s" for k, v in wall.items()))
    if summary.get("run_dir"):
        console.print(f"run folder: {summary['run_dir']}")


def lambda_diagnostics(weights: torch.Tensor, preds: torch.Tensor, y_hidden: torch.Tensor | None) -> dict:
    """The head's weights on the pool's disagreements: distribution, and skill at picking the right teacher.

    weights [D, N], preds [N, D], y_hidden [D]. Two teachers: AUC of lambda for "teacher 1 is right",
    over the disagreements where exactly one of them is right (elsewhere lambda cannot matter).
    N teachers: how often the largest weight is on a right teacher, where at least one is right.
    """
    lam = weights[:, 0].float().cpu()
    hist = torch.histc(lam, bins=10, min=0, max=1)
    out = {"count": int(len(lam)), "mean": float(lam.mean()) if len(lam) else math.nan,
           "std": float(lam.std(unbiased=False)) if len(lam) else math.nan,
           "histogram_0_to_1": [int(v) for v in hist.tolist()]}
    if y_hidden is None or len(lam) == 0:
        return out
    right = (preds == y_hidden.to(preds.device)).cpu()
    if right.shape[0] == 2:
        decisive = right[0] ^ right[1]
        if decisive.any() and right[0][decisive].any() and (~right[0][decisive]).any():
            from sklearn.metrics import roc_auc_score

            out["auc_teacher1_right"] = float(roc_auc_score(right[0][decisive].numpy(), lam[decisive].numpy()))
        out["decisive_count"] = int(decisive.sum())
    else:
        some = right.any(dim=0)
        picked = right[weights.argmax(dim=1).cpu(), torch.arange(right.shape[1])]
        out["argmax_weight_right"] = _rate(picked, some)
    return out
