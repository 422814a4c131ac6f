"""Digests of the library code service.core.compat.REACHES names, taken in a fresh interpreter.

`python -m tests.reach` prints {target: digest} as JSON. A fresh process
sees the libraries as installed: no patch a test or the app applied to a
library module can change what a target's digest is taken of.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from importlib import resources
from typing import Any


def resolve(target: str) -> Any:
    """The object a dotted path names (the longest importable module, then attributes), or a packaged file's text."""
    if ":" in target:
        package, path = target.split(":", 1)
        return (resources.files(package) / path).read_text()
    parts = target.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            found = inspect.getattr_static(found, name) if inspect.isclass(found) else getattr(found, name)
        return found
    raise ImportError(target)


def source_of(target: str) -> str:
    """What a reach's digest is taken of: the source of code, the repr of a value, the text of a file."""
    found = resolve(target)
    if isinstance(found, staticmethod | classmethod):
        found = found.__func__
    if isinstance(found, property):
        found = found.fget
    if inspect.isfunction(found) or inspect.isclass(found):
        return inspect.getsource(found)
    return found if ":" in target else repr(found)


def digest(target: str) -> str:
    """The first 12 hex digits of the SHA-256 of the target's source."""
    return hashlib.sha256(source_of(target).encode()).hexdigest()[:12]


if __name__ == "__main__":
    from service.core.compat import REACHES

    print(json.dumps({reach.target: digest(reach.target) for reach in REACHES}))
