"""A module no worker may ever import: poison tests name it in job hashes. Importing or calling it leaves a marker."""

from __future__ import annotations

import os
from pathlib import Path

MARKER = os.environ.get("POISON_MARKER")
if MARKER:
    Path(MARKER).write_text("imported")


def touch(*args: object, **kwargs: object) -> None:
    if MARKER:
        Path(MARKER).write_text("called")
