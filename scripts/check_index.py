"""Whether a pip package index answers, before ``make install-cpu`` asks it for torch.

    python scripts/check_index.py <index url> [--timeout S]

pip retries an index that does not answer for minutes (5 retries of a 15 s timeout per file it looks for); this asks
once, for the index's torch page as pip would, and where nothing answers within the timeout it ends with one line
saying how to install offline or from a mirror, exit status 2. Any HTTP answer, even an error, counts as answering
(pip then says what is wrong). Proxies are taken from the environment (``HTTPS_PROXY``...), as pip takes them.
"""
from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request


def answers(url: str, timeout: float) -> str | None:
    """None where ``url`` answers; else why not."""
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index", help="the index URL given to pip as --index-url")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer (default 10)")
    args = ap.parse_args(argv)
    why = answers(args.index.rstrip("/") + "/torch/", args.timeout)
    if why is None:
        return 0
    print(f"error: the torch index {args.index} does not answer ({why}, {args.timeout:g} s); offline or behind a "
          "mirror, take torch from pip's own sources (local wheels or a mirror holding a CPU build): make install-cpu "
          "TORCH_INDEX= TORCH='torch==2.13.0', or name a mirror of the CPU index: TORCH_INDEX=<url>", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
