"""Fork server: the still process that forks each job's work horse (`worker.py --fork`).

Forking the worker itself costs more than the fork: afterwards every page the
worker writes while it claims, restores and stores jobs (some 700 pages a
job, counted with `perf record -e page-faults`) takes a copy-on-write fault,
in the worker and again in the horse. So the worker forks once, at start,
this server, which does nothing but read a job from a pipe, fork its horse,
wait for it and report how it ended. Its memory stays still between forks,
so a fork costs what the kernel needs to copy a process of its size and no
more, and the worker, which never forks again, writes its pages for free.

Each job still runs in a work horse of its own, in its own process group: a
crash or an os._exit in a job ends that horse only, and the worker signals
the horse by its pid (grace interrupt, stop request, timeout kill).

Frames on both pipes are a 4-byte length and a `marshal` dump of plain
values (str, int, float, bytes, dict, tuple): the pipes join two processes
of the same program, nothing from outside is ever unmarshalled.
"""

from __future__ import annotations

import contextlib
import gc
import marshal
import os
import select
import signal
import struct
import time
from collections.abc import Callable
from typing import Any

HEADER = struct.Struct("!I")
# An idle server checks this often that its worker is still there (a
# SIGKILLed worker cannot close the pipe for it).
PARENT_CHECK_SECONDS = 1.0
# How long the worker waits for its idle server to exit at end of file.
STOP_SECONDS = 2.0


class ForkServerGone(Exception):
    """Raised in the worker when its fork server has exited (killed, or out of memory)."""


def write_frame(fd: int, value: Any) -> None:
    data = marshal.dumps(value)
    view = memoryview(HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


class FrameReader:
    """Reads frames from a pipe; a read interrupted by an exception (a signal handler's) loses nothing."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""

    def read(self) -> Any:
        """The next frame's value; ForkServerGone at end of file."""
        while True:
            if len(self._buffer) >= HEADER.size:
                (size,) = HEADER.unpack_from(self._buffer)
                end = HEADER.size + size
                if len(self._buffer) >= end:
                    value = marshal.loads(self._buffer[HEADER.size : end])
                    self._buffer = self._buffer[end:]
                    return value
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise ForkServerGone("fork server pipe closed")
            self._buffer += chunk


def read_available(fd: int) -> bytes:
    """What a dead horse left in its outcome pipe (a grandchild holding the pipe open cannot block us)."""
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks)


class ForkServer:
    """The worker's side of its fork server: start it, hand it a job, learn the horse's pid and end.

    `prepare(request)` runs in the server before each fork (what every horse
    would otherwise do from a cold copy); `run_horse(prepared, outcome_fd)`
    runs in the horse: it must end the process (os._exit) and may write the
    job's outcome to `outcome_fd`.
    """

    def __init__(self, prepare: Callable[[Any], Any], run_horse: Callable[[Any, int], None]) -> None:
        self.prepare = prepare
        self.run_horse = run_horse
        self.pid = 0
        self._requests = -1
        self._replies: FrameReader | None = None

    def start(self) -> None:
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the server
            try:
                os.close(requests_w)
                os.close(replies_r)
                serve(FrameReader(requests_r), replies_w, self.prepare, self.run_horse, parent)
            finally:
                os._exit(0)
        os.close(requests_r)
        os.close(replies_w)
        self.pid, self._requests, self._replies = pid, requests_w, FrameReader(replies_r)

    def submit(self, request: Any) -> int:
        """Have the server fork a horse for `request`; return the horse's pid (its process group too)."""
        assert self._replies is not None
        try:
            write_frame(self._requests, request)
        except OSError as exc:  # EPIPE: the server is gone
            raise ForkServerGone(str(exc)) from None
        kind, pid = self._replies.read()
        assert kind == "pid", kind
        return int(pid)

    def wait(self) -> tuple[int, bytes]:
        """Block until the running horse ends; its wait status and what it wrote to its outcome pipe."""
        assert self._replies is not None
        kind, status, outcome = self._replies.read()
        assert kind == "exit", kind
        return int(status), outcome

    def stop(self) -> None:
        """Close the pipes (the server exits at end of file) and reap the server."""
        if not self.pid:
            return
        for fd in (self._requests, self._replies.fd if self._replies else -1):
            with contextlib.suppress(OSError):
                os.close(fd)
        deadline = time.monotonic() + STOP_SECONDS
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(self.pid, os.WNOHANG)[0] == 0:
                if time.monotonic() > deadline:  # a wedged server must not hold our exit
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    break
                time.sleep(0.005)
        self.pid, self._replies = 0, None


def serve(
    requests: FrameReader,
    replies: int,
    prepare: Callable[[Any], Any],
    run_horse: Callable[[Any, int], None],
    parent: int,
) -> None:
    """The server's loop: one request, one horse, one report, until the worker goes away."""
    # Heroku signals the whole process group: only the worker decides when a
    # horse must stop, and it signals the horse itself.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    gc.freeze()  # collections here need not walk (and dirty) the worker's inherited objects
    while True:
        if not requests._buffer and not select.select([requests.fd], [], [], PARENT_CHECK_SECONDS)[0]:
            if os.getppid() != parent:
                return
            continue
        try:
            request = requests.read()
        except ForkServerGone:
            return
        prepared = prepare(request)
        outcome_r, outcome_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the horse
            try:
                os.close(outcome_r)
                os.close(requests.fd)
                os.close(replies)
                os.setpgrp()
                gc.disable()  # a short-lived horse: collecting would only copy the server's pages
                run_horse(prepared, outcome_w)
            finally:
                os._exit(1)
        os.close(outcome_w)
        with contextlib.suppress(OSError):  # its own group before the worker may signal it (the horse does it too)
            os.setpgid(pid, pid)
        write_frame(replies, ("pid", pid))
        _, status = os.waitpid(pid, 0)
        outcome = read_available(outcome_r)
        os.close(outcome_r)
        write_frame(replies, ("exit", status, outcome))
        del prepared
