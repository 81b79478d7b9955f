"""Figure 2: DoRA's surviving components per (matrix type, layer), averaged over the seeds of a table's cell."""
from __future__ import annotations

import csv
import io
import logging
import statistics
from pathlib import Path

from ..results import atomic_write_text
from .selection import Choice

log = logging.getLogger("dynrank.report")


def figure2(choices: dict[tuple, Choice], out: Path, models: set[str] | None = None) -> list[Path]:
    """Mean surviving rank per (matrix type, layer) over seeds, for every (model, task, budget) with DoRA runs
    (the runs the tables use: one config hash, one learning rate)."""
    from ..rankmap import aggregate, draw_heatmap

    written = []
    for (model, task, method, budget, variant), choice in sorted(choices.items(), key=lambda kv: str(kv[0])):
        if method != "dora" or variant is not None or (models and model not in models):
            continue
        maps = [r.method_summary["rank_map"] for r in choice.runs
                if isinstance(r.method_summary, dict) and r.method_summary.get("rank_map")]
        if not maps:
            continue
        try:
            agg = aggregate(maps)
        except ValueError as e:
            log.warning("figure 2 for %s/%s/%s skipped: %s", model, task, budget, e)
            continue
        stem = out / f"figure2_{model}_{task}_{budget}"
        vals = [v for row in agg["counts"] for v in row if v is not None]
        title = (f"DoRA {model} / {task} / {budget}: surviving components, mean of {agg['runs']} seed"
                 f"{'s' if agg['runs'] > 1 else ''}\n({statistics.fmean(vals):.2f} per matrix on average)")
        written.append(draw_heatmap(agg["counts"], agg["rows"], agg["cols"], stem.with_suffix(".png"), title))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["matrix_type", *agg["cols"]])
        for name, row in zip(agg["rows"], agg["counts"]):
            w.writerow([name, *["" if v is None else repr(float(v)) for v in row]])
        atomic_write_text(stem.with_suffix(".csv"), buf.getvalue())
        written.append(stem.with_suffix(".csv"))
    return written
