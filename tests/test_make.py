"""``make install-cpu`` fails fast, with the offline hint, where the torch index does not answer; nothing installs."""
import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT

HINT = "make install-cpu TORCH_INDEX= TORCH='torch==2.13.0'"


@pytest.mark.slow
def test_install_cpu_fails_fast_with_the_offline_hint_where_the_index_does_not_answer(tmp_path):
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers: a dead index or proxy
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/whl/cpu"
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path), PIP_RETRIES="0")  # pip could get nothing
    t0 = time.time()
    try:
        p = subprocess.run(["make", "-C", str(ROOT), "install-cpu", f"PYTHON={sys.executable}", f"TORCH_INDEX={url}",
                            "INDEX_TIMEOUT=1", "TORCH=no-such-package-dynrank"], env=env, capture_output=True,
                           text=True, timeout=120)
    finally:
        silent.close()
    assert time.time() - t0 < 30 and p.returncode != 0
    (line,) = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert line.startswith(f"error: the torch index {url} does not answer (") and HINT in line
    assert "pip install" not in p.stdout  # stopped before pip
    assert HINT in subprocess.run(["make", "-C", str(ROOT), "help"], capture_output=True, text=True).stdout
    assert HINT in (ROOT / "README.md").read_text()


@pytest.mark.slow
def test_an_index_that_answers_passes_even_with_an_http_error():
    from importlib import util

    spec = util.spec_from_file_location("check_index", ROOT / "scripts" / "check_index.py")
    check_index = util.module_from_spec(spec)
    spec.loader.exec_module(check_index)

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert check_index.main([f"http://127.0.0.1:{server.server_port}/whl/cpu", "--timeout", "5"]) == 0
    finally:
        server.shutdown()
