"""The report's figures as PNG bytes: confusion matrix, ROC curves, reliability diagram.

Uses matplotlib's object API with the Agg canvas (no pyplot global state, no display needed).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SIZE = (4.2, 3.6)
DPI = 90


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def confusion_matrix_png(matrix: np.ndarray, classes: Sequence[str], title: str) -> bytes:
    fig = Figure(figsize=SIZE)
    ax = fig.add_subplot()
    m = np.asarray(matrix)
    ax.imshow(m, cmap="Blues")
    peak = m.max() if m.size else 0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(
                j,
                i,
                str(int(m[i, j])),
                ha="center",
                va="center",
                color="white" if peak and m[i, j] > peak / 2 else "black",
            )
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def roc_curves_png(curves: dict[str, dict[str, Sequence[float]]], title: str) -> bytes:
    """One-vs-rest ROC curves, ``{class: {"fpr": [...], "tpr": [...]}}`` (classes with a defined AUC)."""
    fig = Figure(figsize=SIZE)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
    for cls, c in curves.items():
        ax.plot(c["fpr"], c["tpr"], lw=1.5, label=cls)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=10)
    if curves:
        ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def reliability_png(bins: dict, ece: float | None, title: str) -> bytes:
    """Accuracy per confidence bin (:meth:`ReliabilityBins.to_dict` format) against the diagonal.

    Bar opacity grows with the bin's image count.
    """
    fig = Figure(figsize=SIZE)
    ax = fig.add_subplot()
    edges = np.asarray(bins["edges"], np.float64)
    count = np.asarray(bins["count"], np.float64)
    for i in np.flatnonzero(count > 0):
        ax.bar(
            edges[i],
            bins["accuracy"][i],
            width=edges[i + 1] - edges[i],
            align="edge",
            color="tab:blue",
            alpha=float(0.25 + 0.75 * count[i] / count.max()),
            edgecolor="black",
            lw=0.5,
        )
    ax.plot([0, 1], [0, 1], color="tab:red", lw=1, ls="--", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    label = "n/a" if ece is None else f"{ece:.3f}"
    ax.set_title(f"{title} (ECE {label})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def site_curve_png(rows: Sequence[dict], title: str) -> bytes:
    """Sensitivity and specificity (median and 95 % range over draws) against the number of site images."""
    fig = Figure(figsize=(5.0, 3.6))
    ax = fig.add_subplot()
    n = [r["n_images"] for r in rows]
    for name, colour in (("sensitivity", "tab:red"), ("specificity", "tab:blue")):
        med = [r[name]["median"] for r in rows]
        ax.fill_between(
            n, [r[name]["low"] for r in rows], [r[name]["high"] for r in rows], color=colour, alpha=0.2
        )
        ax.plot(n, med, marker="o", color=colour, label=f"{name} (median, 95 % range)")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(n, [str(v) for v in n])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("labelled site images used to choose the threshold")
    ax.set_ylabel("on held-out site images")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _png(fig)
