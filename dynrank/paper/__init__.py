"""The paper's published numbers (Mao et al., ACL 2024), shipped as package data for the report.

The CSV files are verbatim copies of ``shared/paper/table*.csv`` (tables 2, 3, 4, 5, 6 and 9):

  * ``table2_glue.csv``: budget (high|low), method, trainable_params, rte ... mnli, avg (dev, x100);
  * ``table3_squad.csv``: budget, method, trainable_params, squad_v1_em, squad_v1_f1, squad_v2_em, squad_v2_f1;
  * ``table4_xsum.csv``: budget, method, trainable_params, rouge1, rouge2, rougeL;
  * ``table5_dem_ablation.csv``: setting (with_dem|without_dem), stsb, cola, sst2;
  * ``table6_initial_budget.csv``: initial_budget, final_budget, mrpc, stsb, sst2;
  * ``table9_efficiency.csv``: method, minutes_per_epoch_qnli, gpu_memory_mib.

``table(name)`` returns the rows as dicts with numbers parsed to float (and "124.65M"-style parameter
counts left as text); an empty field becomes None.
"""
from __future__ import annotations

import csv
import io
from functools import lru_cache
from importlib import resources

FILES = {
    "table2": "table2_glue.csv",
    "table3": "table3_squad.csv",
    "table4": "table4_xsum.csv",
    "table5": "table5_dem_ablation.csv",
    "table6": "table6_initial_budget.csv",
    "table9": "table9_efficiency.csv",
}

# The paper's budget names -> our conf/budget names.
BUDGETS = {"high": "r8", "low": "r2"}


def _parse(value: str):
    value = value.strip()
    if value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return value


@lru_cache(maxsize=None)
def _load(name: str) -> tuple[dict, ...]:
    if name not in FILES:
        raise KeyError(f"no paper table '{name}'; known: {', '.join(FILES)}")
    text = resources.files(__name__).joinpath(FILES[name]).read_text(encoding="utf-8")
    return tuple({k: _parse(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text)))


def table(name: str) -> list[dict]:
    """Rows of the paper's table ``name`` ("table2", ..., "table9"), fresh copies."""
    return [dict(r) for r in _load(name)]
