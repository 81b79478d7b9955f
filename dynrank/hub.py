"""The Hugging Face Hub: whether it answers, so that an unreachable Hub fails in seconds, not in a minute.

transformers and datasets retry a Hub that does not answer five times with back-off (50-70 s of warnings)
before failing, even for a model that is already in the local cache. Before loading from the Hub, dynrank
asks once per process whether the Hub answers (a TCP connection to ``HF_ENDPOINT``'s host, or to the HTTPS
proxy's, within ``PROBE_TIMEOUT_S``). When it does not, or ``HF_HUB_OFFLINE`` is set:

* a model or tokenizer in the local cache is loaded from it (``local_files_only=True``);
* a model not in the cache, or a dataset, is an error at once that says what to pass instead.
"""
from __future__ import annotations

import functools
import os
import socket
import urllib.parse
import urllib.request
from pathlib import Path

from .errors import ConfigError, DataError

PROBE_TIMEOUT_S = 2.0  # a TCP handshake with the Hub takes well under a second where it answers at all


def offline(*names: str) -> bool:
    """``HF_HUB_OFFLINE`` (or one of ``names``, e.g. ``HF_DATASETS_OFFLINE``) is set to a true value."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", *names))


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


@functools.cache
def reachable() -> bool:
    """Whether a TCP connection to the Hub (or to the proxy that reaches it) opens within ``PROBE_TIMEOUT_S``."""
    url = urllib.parse.urlsplit(endpoint())
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host or ""):
        purl = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = purl.hostname, purl.port or 80
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def model_source(mcfg) -> str:
    """Where a model config loads from: ``model.path`` (a local directory), else ``model.name`` (a Hub id)."""
    return str(mcfg.path) if mcfg.get("path") else str(mcfg.name)


def _is_repo_id(src: str) -> bool:
    """``roberta-base``, ``org/name``: a Hub id (a path that does not exist is left to transformers' own error)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(src)
    except HFValidationError:
        return False
    return not src.startswith((".", "~"))


def _cached(repo_id: str) -> bool:
    """Whether the model ``repo_id`` is in the local Hugging Face cache (its ``config.json`` is)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def pretrained_kwargs(src: str, hint: str = "pass model.path=/local/model/dir (model=minilm works offline)") -> dict:
    """Extra ``from_pretrained`` arguments for ``src`` (a local directory or a Hub id): ``local_files_only`` when
    the Hub is off or does not answer; a ``ConfigError`` ending in ``hint`` at once when the model is then not in
    the cache."""
    if Path(src).exists() or not _is_repo_id(src) or (not offline() and reachable()):
        return {}
    if _cached(src):
        return {"local_files_only": True}
    why = "HF_HUB_OFFLINE is set" if offline() else f"the Hub ({endpoint()}) does not answer"
    from huggingface_hub import constants

    raise ConfigError(f"'{src}' is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; "
                      f"{hint}, or run once where the Hub answers to cache it")


def _dataset_cached(repo_id: str) -> bool:
    """Whether ``datasets`` holds a copy of the Hub dataset ``repo_id`` (its own cache, or the Hub's download cache):
    what ``HF_HUB_OFFLINE=1`` can load it from."""
    from huggingface_hub import constants

    ds_cache = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")  # as datasets has
    return (ds_cache / repo_id.replace("/", "___")).is_dir() or \
        (Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}").is_dir()


def check_sources(models: list[str], datasets: dict[str, str]) -> None:
    """Every model (a local directory or a Hub id) and Hub dataset (repo id -> what to pass instead) a command
    will load, checked at once: a ``ConfigError`` or ``DataError`` for the first that cannot load, in seconds where
    the Hub does not answer (``make reproduce-tables`` before its first preset; ``scripts/reproduce_tables.py``)."""
    for src in dict.fromkeys(models):
        pretrained_kwargs(src)
    for repo_id, hint in datasets.items():
        if offline("HF_DATASETS_OFFLINE"):
            if not _dataset_cached(repo_id):
                raise DataError(f"{repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; {hint}, or "
                                "run once where the Hub answers to cache it")
        elif not reachable():
            raise _unanswered(repo_id, hint)


def _unanswered(where: str, hint: str) -> DataError:
    return DataError(f"could not load {where}: the Hub ({endpoint()}) does not answer; {hint}, or set "
                     "HF_HUB_OFFLINE=1 to use a copy already in your Hugging Face cache")


def load_dataset(repo_id: str, split: str, hint: str, name: str | None = None):
    """``datasets.load_dataset(repo_id, name, split=split)``; a ``DataError`` ending in ``hint`` (what to pass
    instead, e.g. ``pass data.dir=...``) when it fails, at once when the Hub does not answer."""
    import datasets

    where = f"{repo_id}{'/' + name if name else ''}/{split}"
    if not offline("HF_DATASETS_OFFLINE") and not reachable():
        raise _unanswered(where, hint)
    try:
        return datasets.load_dataset(repo_id, name, split=split)
    except Exception as e:  # offline, no cache, Hub error: say how to run from local files
        msg = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"could not load {where} from the Hub ({type(e).__name__}: {msg}); {hint}") from None
