"""scripts/stack_check.py: two stores of the same cells, each cell's seeds compared with Welch's interval."""
from __future__ import annotations

import importlib.util
import sys

from conftest import ROOT
from test_report import _write_run

_spec = importlib.util.spec_from_file_location("stack_check", ROOT / "scripts" / "stack_check.py")
stack_check = importlib.util.module_from_spec(_spec)
sys.modules["stack_check"] = stack_check
_spec.loader.exec_module(stack_check)


def test_labels_name_the_stores_and_a_shifted_cell_is_flagged(tmp_path):
    """A cell whose first store scores 10 points above the second at every seed is outside noise; a cell with the
    same scores both ways is within it; ``--labels`` names the two columns."""
    first, second = tmp_path / "packed", tmp_path / "padded"
    scores = [0.70, 0.72, 0.69, 0.71, 0.73]
    for seed, v in enumerate(scores, 1):
        for store, shift in ((first, 0.10), (second, 0.0)):
            _write_run(store, "tiny", "mrpc", "lora", "r8", seed, {"accuracy": v + shift}, "accuracy")
            _write_run(store, "tiny", "mrpc", "dora", "r8", seed, {"accuracy": v}, "accuracy")
    out = tmp_path / "check.md"
    assert stack_check.main([str(first), str(second), "--labels", "packed,padded", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| task | method | lr | packed (runs per model) | padded |" in text
    rows = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| mrpc")}
    assert rows["lora"].endswith("| outside noise |") and "+10.00" in rows["lora"]
    assert rows["dora"].endswith("| within noise |") and "+0.00" in rows["dora"]
    assert "2 cells; 1 with a 95% interval that excludes 0" in text
