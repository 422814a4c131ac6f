"""Count Redis round trips: run a program with redis-py patched to count each packed send.

`python bench/rt_count.py OUT -m module args...` or `python bench/rt_count.py OUT script.py args...`
runs the program; at exit (of this process and of every child forked from
it) the number of round trips it made is appended to OUT, one line per
process. One command or one whole pipeline is one send, so one round trip.
Used by bench/redis_costs.py; `install()` does the same inside a process.
"""

from __future__ import annotations

import atexit
import os
import runpy
import sys

from redis.connection import AbstractConnection

COUNT = [0]


def install() -> list[int]:
    """Patch redis-py in this process; return the one-item list that counts round trips."""
    original = AbstractConnection.send_packed_command
    if getattr(original, "_counting", False):
        return COUNT

    def send_packed_command(self: AbstractConnection, command: object, check_health: bool = True) -> None:
        COUNT[0] += 1
        original(self, command, check_health)

    send_packed_command._counting = True  # type: ignore[attr-defined]
    AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign]
    return COUNT


def _report(path: str, pid: int) -> None:
    with open(path, "a") as out:
        out.write(f"{COUNT[0]}\n")


def _forked() -> None:
    # A forked child (work horse, pool worker) reports only its own round
    # trips; os._exit skips atexit, so the horse's count is written here too.
    COUNT[0] = 0
    original_exit = os._exit

    def counted_exit(status: int) -> None:
        _report(OUT[0], os.getpid())
        original_exit(status)

    os._exit = counted_exit  # type: ignore[assignment]


OUT = [""]


def main() -> None:
    OUT[0], target, *rest = sys.argv[1:]
    install()
    atexit.register(_report, OUT[0], os.getpid())
    os.register_at_fork(after_in_child=_forked)
    sys.path.insert(0, os.getcwd())
    if target == "-m":
        module, *args = rest
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [target, *rest]
        runpy.run_path(target, run_name="__main__")


if __name__ == "__main__":
    main()
