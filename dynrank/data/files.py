"""Reading local data files: errors that name the file and the line."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError


def not_utf8(path, e: UnicodeDecodeError) -> DataError:
    """The line of ``path`` that is not UTF-8 (a ``UnicodeDecodeError`` only knows an offset in a buffer)."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as bad:
                return DataError(f"{path}:{lineno} is not UTF-8 text (byte 0x{line[bad.start]:02x} at column "
                                 f"{bad.start + 1}); save the file as UTF-8, or fix or remove that line")
    return DataError(f"{Path(path)} is not UTF-8 text ({e.reason}); save the file as UTF-8")
