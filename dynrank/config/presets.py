"""The paper-table presets of ``conf/experiment/``, by table: one list for ``make reproduce-tables``
(``scripts/reproduce_tables.py``), ``scripts/estimate.py`` and the tests."""
from __future__ import annotations

BY_TABLE = {
    "table2": ["table2_r8", "table2_r2"],
    "table3": ["table3_r8", "table3_r2"],
    "table4": ["table4_r8", "table4_r2"],
    "table5": ["table5_dem", "table5_nodem"],
    "table6": ["table6"],
    "table9": ["table9"],
}
ORDER = ["table2", "table5", "table6", "table3", "table4", "table9"]  # what `all` runs: GLUE first, timings last
PAPER = [p for table in sorted(BY_TABLE) for p in BY_TABLE[table]]  # every preset of a paper table
OTHER = ["lr_search", "smoke", "demo"]  # conf/experiment/'s presets that are no paper table
