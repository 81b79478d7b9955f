"""docs/methods.md "Adding a method": its worked example (rsLoRA) is four files that work as written. The blocks
are taken from the doc, the configs written into a copy of conf/, the module registered as
``dynrank.methods.rslora``, and the doc's own test run: a doc whose code breaks fails here."""
import importlib.util
import math
import re
import shutil
import sys

import torch

from conftest import CONF, ROOT

DOC = ROOT / "docs" / "methods.md"
FILES = ["dynrank/methods/rslora.py", "conf/method/rslora.yaml", "conf/hparams/rslora.yaml", "tests/test_rslora.py"]


def example() -> dict[str, str]:
    """The section's code blocks by the file each is (the fence's info: ```python dynrank/methods/rslora.py)."""
    section = DOC.read_text().split("\n## Adding a method\n", 1)[1].split("\n## ", 1)[0]
    return {path: body for path, body in re.findall(r"^```\w+ (\S+)\n(.*?)^```$", section, re.S | re.M)}


def _module(name: str, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_the_docs_rslora_example_works(tmp_path, monkeypatch):
    files = example()
    assert list(files) == FILES  # the four files the section names, in its order
    assert 40 <= sum(len(body.splitlines()) for body in files.values()) <= 80  # "about 60 lines"
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    for path in FILES[1:3]:
        (conf / path.removeprefix("conf/")).write_text(files[path])
    monkeypatch.setattr("dynrank.config.command_line.CONF_DIR", conf)  # compose, choices read it per call
    for path in (FILES[0], FILES[3]):
        (tmp_path / path.rpartition("/")[2]).write_text(files[path])
    monkeypatch.setitem(sys.modules, "dynrank.methods.rslora", None)  # restored (removed) after the test
    rslora = _module("dynrank.methods.rslora", tmp_path / "rslora.py")

    from dynrank import methods
    from dynrank.config import compose

    assert "rslora" in methods.names(stacks=True)  # so the generated lists test it stacked and on the GPU
    cfg = compose(["method=rslora", "task=cola", "budget=r2"])
    assert (cfg.method.alpha, cfg.train.lr) == (16, compose(["method=lora", "task=cola"]).train.lr)
    layer = rslora.RsLoRALinear(torch.nn.Linear(8, 8), 2, 4, 16.0, 0.0)
    assert layer.scaling == 16.0 / math.sqrt(4) == 8.0  # LoRA's would be 16 / 4
    test = _module("test_rslora_from_the_doc", tmp_path / "test_rslora.py")
    names = [n for n in dir(test) if n.startswith("test_")]
    assert names
    for n in names:
        getattr(test, n)(tmp_path / n)
