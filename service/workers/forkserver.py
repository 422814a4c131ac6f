"""Fork server: the still process that forks each job's work horse (`worker.py --fork`).

Forking the worker itself costs more than the fork: afterwards every page the
worker writes while it claims, restores and stores jobs (some 700 pages a
job, counted with `perf record -e page-faults`) takes a copy-on-write fault,
in the worker and again in the horse. So the worker forks once, at start,
this server, which does nothing but fork horses, hand each its job and
report how it ended. Its memory stays still between forks, so a fork costs
what the kernel needs to copy a process of its size and no more, and the
worker, which never forks again, writes its pages for free.

The server keeps one spare horse forked ahead, waiting for its job on a
pipe of its own: the fork (milliseconds for a 50 MB process on a VM)
happens while the worker stores the last outcome and claims the next job,
not after. A horse that shipped a plain success closes its outcome pipe and
exits; the server reports the outcome at once and reaps the horse after, so
its exit, too, overlaps the worker's next steps.

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

    `run_horse(request, outcome_fd)` runs in the horse: it must end the
    process (os._exit) and may write the job's outcome to `outcome_fd`, then
    close it (the outcome is reported when the pipe closes).
    """

    def __init__(self, run_horse: Callable[[Any, int], None]) -> None:
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
                serve(FrameReader(requests_r), replies_w, self.run_horse, parent)
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
        """Block until the running horse ends; its wait status and what it wrote to its outcome pipe.

        A horse that wrote an outcome and closed the pipe has ended its job:
        status 0 is reported then, while it exits.
        """
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


class Horse:
    """The server's handle on one forked horse: its pid, its request and outcome pipes, a pidfd."""

    def __init__(self, pid: int, request_w: int, outcome_r: int) -> None:
        self.pid = pid
        self.request_w = request_w
        self.outcome_r = outcome_r
        self.pidfd = -1
        self.status: int | None = None
        with contextlib.suppress(AttributeError, OSError):  # Linux 5.3+; without, wait() reaps first
            self.pidfd = os.pidfd_open(pid)

    @classmethod
    def fork(cls, run_horse: Callable[[Any, int], None], server_fds: tuple[int, ...]) -> Horse:
        """Fork a spare horse that waits for its request, then runs it."""
        request_r, request_w = os.pipe()
        outcome_r, outcome_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                for fd in (*server_fds, request_w, outcome_r):
                    os.close(fd)
                os.setpgrp()
                gc.disable()  # a short-lived horse: collecting would only copy the server's pages
                try:
                    request = FrameReader(request_r).read()
                except ForkServerGone:  # the server went away before it had a job for us
                    os._exit(0)
                os.close(request_r)
                run_horse(request, outcome_w)
            finally:
                os._exit(1)
        os.close(request_r)
        os.close(outcome_w)
        with contextlib.suppress(OSError):  # its own group before the worker may signal it (the horse does it too)
            os.setpgid(pid, pid)
        return cls(pid, request_w, outcome_r)

    def hand(self, request: Any) -> bool:
        """Give the horse its job; False if it died while it waited."""
        try:
            write_frame(self.request_w, request)
            return True
        except BrokenPipeError:
            return False
        finally:
            os.close(self.request_w)

    def wait(self) -> tuple[int, bytes]:
        """The horse's wait status and outcome: (0, outcome) as soon as it closed a non-empty outcome pipe."""
        chunks: list[bytes] = []
        poller = select.poll()
        poller.register(self.outcome_r, select.POLLIN)
        if self.pidfd >= 0:
            poller.register(self.pidfd, select.POLLIN)
        pipe_open = True
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self.pidfd in ready:
                break  # it exited: a grandchild holding the pipe open cannot keep us waiting
            if not pipe_open or self.outcome_r not in ready:
                continue
            if chunk := os.read(self.outcome_r, 65536):
                chunks.append(chunk)
                continue
            if chunks:
                return 0, b"".join(chunks)
            pipe_open = False
            poller.unregister(self.outcome_r)
            if self.pidfd < 0:
                break
        status = self.reap()
        return status, b"".join(chunks) + read_available(self.outcome_r)

    def reap(self) -> int:
        """Wait for the horse to exit (once); its wait status."""
        if self.status is None:
            _, self.status = os.waitpid(self.pid, 0)
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        return self.status

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.outcome_r)


def serve(requests: FrameReader, replies: int, run_horse: Callable[[Any, int], None], parent: int) -> None:
    """The server's loop: hand each request to the spare horse, report, fork the next spare; until the worker goes."""
    # Heroku signals the whole process group: only the worker decides when a
    # horse must stop, and it signals the horse itself.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    gc.disable()  # nothing here makes cycles; a collection would only dirty pages every horse then copies
    server_fds = (requests.fd, replies)
    spare = Horse.fork(run_horse, server_fds)
    while True:
        if not requests._buffer and not select.select([requests.fd], [], [], PARENT_CHECK_SECONDS)[0]:
            if os.getppid() != parent:
                return
            continue
        try:
            request = requests.read()
        except ForkServerGone:
            return
        if not spare.hand(request):  # killed while it waited: no job was lost, fork another
            spare.reap()
            spare.close()
            spare = Horse.fork(run_horse, server_fds)
            spare.hand(request)
        horse = spare
        write_frame(replies, ("pid", horse.pid))
        status, outcome = horse.wait()
        write_frame(replies, ("exit", status, outcome))
        spare = Horse.fork(run_horse, server_fds)  # while the worker stores the outcome and claims
        horse.reap()
        horse.close()
