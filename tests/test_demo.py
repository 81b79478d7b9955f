"""`make demo` (scripts/demo.py) ends with the run's dev accuracy beside the majority class's (not timed here)."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_demo_prints_dev_accuracy_beside_the_majority_class(tmp_path):
    sst2 = tmp_path / "glue" / "SST-2"
    sst2.mkdir(parents=True)
    for split, n in (("train", 32), ("dev", 40)):  # dev: 30 of 40 positive, majority class 0.750
        rows = [f"a {'good' if i % 4 else 'bad'} film number {i} .\t{int(i % 4 != 0)}" for i in range(n)]
        (sst2 / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "model=tiny", f"data.dir={tmp_path / 'glue'}",
                        f"data.cache_dir={tmp_path / 'cache'}", f"results.store={tmp_path / 'store'}",
                        f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    last = p.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"demo: sst2 dev accuracy (\d\.\d{3}) vs majority class 0\.750 \(lora on tiny, 1 epoch\(s\) on "
                     r"32 training sentences, 40 dev sentences; run directory and results: the lines above\)", last)
    assert m, last
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert m.group(1) == f"{res['final']['dev']['accuracy']:.3f}"
