"""The per-class record of an evaluation (``eval_per_class.json``) and its picture
(``confusion.png``): the confusion matrix with each row (true class) normalised to 1, so a
class's row shows where its samples went whatever its size, and the per-class top-1 beside it.

matplotlib's object API on the Agg canvas, as ``curves.py``: no pyplot state, no display.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core import atomic
from ..core.atomic import atomic_path

PER_CLASS_FILE = "eval_per_class.json"
CONFUSION_FILE = "confusion.png"
MAX_TICK_LABELS = 40  # above this many classes the axes carry no names (they would overlap)


def write_per_class(record: dict, output_dir: str | os.PathLike) -> list[Path]:
    """``eval_per_class.json`` and, when the record has a confusion matrix, ``confusion.png``
    in ``output_dir``, each published whole; returns the paths written."""
    out = Path(output_dir)
    atomic.write_json(out / PER_CLASS_FILE, record)
    written = [out / PER_CLASS_FILE]
    if record.get("confusion") is not None:
        fig = draw_confusion(record)
        with atomic_path(out / CONFUSION_FILE) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        written.append(out / CONFUSION_FILE)
    return written


def draw_confusion(record: dict):
    """The figure of a per-class record with a confusion matrix (see the module docstring)."""
    # Imported here: matplotlib is slow to import and only needed for this picture.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names, matrix = record["classes"], record["confusion"]
    n = len(names)
    rows = [[v / max(1, sum(row)) for v in row] for row in matrix]
    side = min(12.0, max(4.0, 0.25 * n + 3))
    fig = Figure(figsize=(side + 1.5, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(rows, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    top1 = [t for t in record["top1"] if t is not None]
    mean = sum(top1) / len(top1) if top1 else float("nan")
    ax.set_title(f"confusion (rows normalised); mean per-class top-1 {mean:.4f}")
    if n <= MAX_TICK_LABELS:
        ax.set_xticks(range(n), labels=names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), labels=names, fontsize=8)
    fig.tight_layout()
    return fig
