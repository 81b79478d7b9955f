"""The paper's tables from our runs (``python -m dynrank.report``; what it computes: docs/reproduce.md, The report).

One module per concern, each importing only those above it:

* ``selection``: which number a run contributes (per-epoch rules standard / paper_code) and a cell's learning rate;
* ``paired``: differences paired by seed, their Student-t interval, and the paper's claims as numbers;
* ``tables``: what each table is (rows, columns, notes), declaratively;
* ``aggregate``: the runs of each cell and their mean and spread over seeds;
* ``compare``: each row against the paper's method paired by seed, the claims tested;
* ``render``: Markdown, LaTeX and CSV; ``figures``: Figure 2; ``lr_search``: ``--select-lr``;
* ``cli``: ``report()`` writes everything, ``main()`` is the command line.
"""
from .aggregate import Cell, aggregate_cell, cell_choices, cell_name, choose_all, compute, index_runs, seed_values
from .cli import build_tables, main, report
from .compare import claims, paired_comparisons, reference_row, series
from .figures import figure2
from .lr_search import lr_grids, select_lr
from .render import to_csv, to_latex, to_markdown
from .tables import BUILDERS, GLUE_TASKS, TABLES, Column, Row, Table, default_model, paper_model

__all__ = ["BUILDERS", "GLUE_TASKS", "TABLES", "Cell", "Column", "Row", "Table", "aggregate_cell", "build_tables",
           "cell_choices", "cell_name", "choose_all", "claims", "compute", "default_model", "figure2", "index_runs",
           "lr_grids", "main", "paired_comparisons", "paper_model", "reference_row", "report", "seed_values",
           "select_lr", "series", "to_csv", "to_latex", "to_markdown"]
