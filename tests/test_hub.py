"""An unreachable Hub fails in seconds with what to pass instead; a cached model still loads (dynrank/hub.py)."""
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, SHARED_GLUE
from dynrank import hub
from dynrank.errors import ConfigError

MINILM = ROOT.parent / "shared" / "models" / "all-MiniLM-L6-v2"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.fixture
def endpoint(monkeypatch):
    """Point the Hub at a local address and drop the offline switches; returns a setter for the port."""
    from huggingface_hub import constants

    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY",
              "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)

    def point(port: int):
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        hub.reachable.cache_clear()
    yield point
    hub.reachable.cache_clear()


def test_probe_tells_an_answering_hub_from_a_silent_one(endpoint):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        endpoint(server.getsockname()[1])
        assert hub.reachable()
    endpoint(_closed_port())
    t = time.monotonic()
    assert not hub.reachable()
    assert time.monotonic() - t < hub.PROBE_TIMEOUT_S + 1


def test_model_from_cache_or_one_line_when_absent(endpoint, monkeypatch, tmp_path):
    """Hub silent: a model in the cache loads from it (local_files_only), one that is not fails at once."""
    from huggingface_hub import constants

    endpoint(_closed_port())
    repo = "sentence-transformers/all-MiniLM-L6-v2"
    snap = tmp_path / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("0" * 40)
    files = snap / "snapshots" / ("0" * 40)
    files.mkdir(parents=True)
    for f in MINILM.iterdir():
        (files / f.name).symlink_to(f)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hub.pretrained_kwargs(repo) == {"local_files_only": True}
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(repo, cache_dir=str(tmp_path / "hub"),
                                         **hub.pretrained_kwargs(repo)).tokenize("hello") == ["hello"]
    t = time.monotonic()
    with pytest.raises(ConfigError, match=r"^'roberta-base' is not in the Hugging Face cache .* and the Hub "
                                          r"\(http://127.0.0.1:\d+\) does not answer; pass model.path="):
        hub.pretrained_kwargs("roberta-base")
    assert time.monotonic() - t < hub.PROBE_TIMEOUT_S + 1
    assert hub.pretrained_kwargs(str(MINILM)) == {}  # a local directory never asks the Hub


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["model=roberta_base", f"data.dir={SHARED_GLUE}"], "error: 'roberta-base' is not in the Hugging Face cache"),
    (["model=tiny"], "error: could not load nyu-mll/glue/cola/train: the Hub (http://127.0.0.1:"),
])
def test_cli_fails_in_seconds_without_retries(tmp_path, args, message):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "dynrank.train", "task=cola", "method=lora", *args,
                        f"hydra.run.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), p.stderr[-2000:]
    assert "Retrying" not in p.stdout + p.stderr  # huggingface_hub's back-off never started
    assert elapsed < 30, elapsed  # start-up included; the back-off alone took 50-70 s
