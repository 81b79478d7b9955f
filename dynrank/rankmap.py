"""Rank maps: surviving DoRA components per (matrix type, layer), and the paper's Figure-2 heatmap.

A rank map is a JSON-able dict ``{"rows": [matrix types], "cols": [layer labels], "counts": [[n]]}``:
rows follow ``models.MATRIX_TYPES`` (query, key, value, attention output, FFN up, FFN down), then any
BART cross-attention types (``cross_query``...); columns are the layer labels of ``models.find_targets``
("0".."11" for encoders, "enc.0".."dec.5" for BART). A cell with no adapted matrix (BART's
cross-attention rows in encoder columns) is ``null``.

``draw_heatmap`` draws any counts matrix (one run's, or the mean over seeds from ``aggregate``) the
way Figure 2 does: matrix types as rows, layers as columns, the number in each cell.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

from .models import MATRIX_TYPES

PRETTY = {"query": "query", "key": "key", "value": "value", "attn_out": "attention output",
          "ffn_up": "FFN up", "ffn_down": "FFN down"}


def pretty_row(matrix_type: str) -> str:
    if matrix_type.startswith("cross_"):
        return "cross " + PRETTY.get(matrix_type[6:], matrix_type[6:])
    return PRETTY.get(matrix_type, matrix_type)


def _row_order(types: Iterable[str]) -> list[str]:
    present = set(types)
    rows = [t for t in MATRIX_TYPES if t in present]
    rows += [f"cross_{t}" for t in MATRIX_TYPES if f"cross_{t}" in present]
    rows += sorted(present - set(rows))
    return rows


def _col_key(label: str):
    side, _, num = label.rpartition(".")
    order = {"": 0, "enc": 0, "dec": 1}.get(side, 2)
    return (order, side, int(num) if num.isdigit() else num)


def build_rank_map(cells: Iterable[tuple[str, str, int]]) -> dict:
    """``cells``: (matrix_type, layer_label, surviving components) per adapted matrix."""
    cells = list(cells)
    rows = _row_order(t for t, _, _ in cells)
    cols = sorted({layer for _, layer, _ in cells}, key=_col_key)
    counts: list[list[int | None]] = [[None] * len(cols) for _ in rows]
    ri, ci = {r: i for i, r in enumerate(rows)}, {c: i for i, c in enumerate(cols)}
    for t, layer, n in cells:
        i, j = ri[t], ci[layer]
        counts[i][j] = int(n) + (counts[i][j] or 0)
    return {"rows": rows, "cols": cols, "counts": counts}


def aggregate(maps: Sequence[dict]) -> dict:
    """Mean counts over several runs' rank maps (e.g. seeds) with the same rows and columns.

    Cells that are ``null`` in every map stay ``null``; the result has ``"runs": len(maps)``.
    """
    if not maps:
        raise ValueError("no rank maps to aggregate")
    rows, cols = list(maps[0]["rows"]), list(maps[0]["cols"])
    for m in maps[1:]:
        if list(m["rows"]) != rows or list(m["cols"]) != cols:
            raise ValueError("rank maps disagree on rows/columns (different models?)")
    mean: list[list[float | None]] = []
    for i in range(len(rows)):
        row = []
        for j in range(len(cols)):
            vals = [m["counts"][i][j] for m in maps if m["counts"][i][j] is not None]
            row.append(sum(vals) / len(vals) if vals else None)
        mean.append(row)
    return {"rows": rows, "cols": cols, "counts": mean, "runs": len(maps)}


def draw_heatmap(counts: Sequence[Sequence[float | None]], rows: Sequence[str], cols: Sequence[str], path,
                 title: str | None = None, vmax: float | None = None) -> Path:
    """Figure 2: a heatmap of ``counts`` (rows x cols) with the number written in every cell (``heatmap``),
    saved as a PNG at ``path``; returns the path."""
    import matplotlib.pyplot as plt

    fig = heatmap(counts, rows, cols, title, vmax)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def heatmap(counts: Sequence[Sequence[float | None]], rows: Sequence[str], cols: Sequence[str],
            title: str | None = None, vmax: float | None = None):
    """The matplotlib figure of ``draw_heatmap``.

    ``rows`` may be matrix types (``attn_out``...; drawn with the paper's names) or any labels.
    Integer counts are written as integers (and the colour bar has integer ticks), means with one decimal;
    ``None`` cells stay blank. The colour scale runs from 0 to ``vmax`` (e.g. the initial budget r0; default:
    the largest count).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    data = np.array([[math.nan if v is None else float(v) for v in r] for r in counts], dtype=float)
    if data.ndim != 2 or data.shape != (len(rows), len(cols)):
        raise ValueError(f"counts shape {data.shape} does not match {len(rows)} rows x {len(cols)} cols")
    integral = all(v is None or float(v).is_integer() for r in counts for v in r)
    finite = data[np.isfinite(data)]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.62 * len(cols) + 2.5), max(3.0, 0.5 * len(rows) + 1.5)))
    # the scale starts at 0 (a count of 7 beside 9 is not drawn as "none" beside "all"), integer ticks for counts
    if vmax is None:
        vmax = max(1.0, float(finite.max())) if finite.size else 1.0
    im = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", aspect="auto", vmin=0, vmax=vmax)
    fig.colorbar(im, ax=ax, label="surviving components",
                 ticks=MaxNLocator(integer=True) if integral else None)
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=45 if any(len(c) > 3 for c in cols) else 0)
    ax.set_yticks(range(len(rows)), labels=[pretty_row(r) for r in rows])
    ax.set_xlabel("layer")
    mid = im.norm.vmax / 2
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            v = data[i, j]
            if math.isfinite(v):
                ax.text(j, i, f"{int(v)}" if integral else f"{v:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if v < mid else "black")
    if title is None and finite.size:
        title = f"surviving components per matrix (mean {finite.mean():.2f})"
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def draw_rank_map(rank_map: dict, path, title: str | None = None, vmax: float | None = None) -> Path:
    return draw_heatmap(rank_map["counts"], rank_map["rows"], rank_map["cols"], path, title, vmax)
