"""The fork server's framing and its failure modes: message boundaries, partial writes and reads, a dead server."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from service.workers import forkserver
from service.workers.forkserver import HEADER, ForkServer, ForkServerGone, FrameReader, write_frame


class SignalRaised(BaseException):
    """What the worker's signal handlers raise (ShutdownImminent, JobStopped) in the middle of a read."""


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        try:
            os.close(fd)
        except OSError:
            pass


def test_frames_written_back_to_back_read_one_value_each(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    values = [("pid", 42), ("exit", 0, b"outcome"), {"k": [1, 2.5, None]}, b"", "x" * 1000]
    for value in values:
        write_frame(write_fd, value)
    reader = FrameReader(read_fd)
    assert [reader.read() for _ in values] == values


def test_a_frame_larger_than_the_pipe_arrives_whole(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    big = b"\x01" * (1 << 20)  # the write blocks until the reader drains the 64 KiB pipe
    writer = threading.Thread(target=write_frame, args=(write_fd, ("exit", 0, big)))
    writer.start()
    assert FrameReader(read_fd).read() == ("exit", 0, big)
    writer.join()


def test_a_frame_sent_a_byte_at_a_time_is_read_once_complete(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    encoded = HEADER.pack(len(forkserver.marshal.dumps(("pid", 7)))) + forkserver.marshal.dumps(("pid", 7))

    def dribble() -> None:
        for byte in encoded:
            os.write(write_fd, bytes([byte]))

    writer = threading.Thread(target=dribble)
    writer.start()
    assert FrameReader(read_fd).read() == ("pid", 7)
    writer.join()


def test_write_frame_finishes_a_cut_short_write(pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    read_fd, write_fd = pipe
    real_write = os.write
    calls = []

    def short_write(fd: int, data: Any) -> int:  # as a signal arriving mid-write would leave it
        calls.append(len(data))
        return real_write(fd, bytes(data[:3])) if fd == write_fd else real_write(fd, data)

    monkeypatch.setattr(forkserver.os, "write", short_write)
    write_frame(write_fd, ("exit", 1, b"abcdefgh"))
    monkeypatch.undo()
    assert len(calls) > 1
    assert FrameReader(read_fd).read() == ("exit", 1, b"abcdefgh")


def test_a_read_interrupted_mid_frame_loses_nothing(pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    read_fd, write_fd = pipe
    write_frame(write_fd, ("exit", 0, b"first"))
    encoded = os.read(read_fd, 1 << 16)
    os.write(write_fd, encoded[:5])  # the header and one byte of the body
    real_read = os.read
    reads = []

    def interrupted(fd: int, size: int) -> bytes:  # the second read is cut by a signal handler's exception
        reads.append(size)
        if len(reads) == 2:
            raise SignalRaised("raised by a signal handler")
        return real_read(fd, size)

    reader = FrameReader(read_fd)
    monkeypatch.setattr(forkserver.os, "read", interrupted)
    with pytest.raises(SignalRaised):
        reader.read()
    monkeypatch.undo()
    os.write(write_fd, encoded[5:])
    assert reader.read() == ("exit", 0, b"first")


def test_end_of_file_is_a_gone_server(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    os.write(write_fd, HEADER.pack(10) + b"abc")  # a frame cut off by the writer's death
    os.close(write_fd)
    with pytest.raises(ForkServerGone):
        FrameReader(read_fd).read()


def horse(request: Any, outcome_fd: int) -> None:
    """Run in a forked horse: 'ok' ships an outcome, 'crash' exits 3 without one, 'kill' dies by SIGKILL,
    'hold' waits for a signal."""
    if request == "ok":
        os.write(outcome_fd, b"shipped")
        os.close(outcome_fd)
        os._exit(0)
    if request == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if request == "hold":
        signal.pause()
    os._exit(3)


@pytest.fixture
def server() -> Iterator[ForkServer]:
    fork_server = ForkServer(horse)
    fork_server.start()
    yield fork_server
    fork_server.stop()


def test_a_horse_that_ships_an_outcome_is_reported_with_it(server: ForkServer) -> None:
    pid = server.submit("ok")
    assert pid > 0 and pid != server.pid
    assert server.wait() == (0, b"shipped")


def test_a_horse_that_exits_or_is_killed_is_reported_with_its_wait_status(server: ForkServer) -> None:
    server.submit("crash")
    status, outcome = server.wait()
    assert (os.WIFEXITED(status), os.WEXITSTATUS(status), outcome) == (True, 3, b"")
    server.submit("kill")
    status, outcome = server.wait()
    assert (os.WIFSIGNALED(status), os.WTERMSIG(status), outcome) == (True, signal.SIGKILL, b"")


def test_a_dead_server_is_reported_as_gone_and_a_new_one_serves(server: ForkServer) -> None:
    os.kill(server.pid, signal.SIGKILL)
    os.waitpid(server.pid, 0)
    with pytest.raises(ForkServerGone):
        server.submit("ok")
    server.stop()
    server.start()
    server.submit("ok")
    assert server.wait() == (0, b"shipped")


def test_a_server_that_dies_while_a_horse_runs_is_reported_as_gone(server: ForkServer) -> None:
    pid = server.submit("hold")
    try:
        os.kill(server.pid, signal.SIGKILL)
        with pytest.raises(ForkServerGone):
            server.wait()
    finally:
        os.killpg(pid, signal.SIGKILL)  # the orphan the worker kills in that case


def test_a_stopped_server_exits(server: ForkServer) -> None:
    pid = server.pid
    server.stop()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    assert server.pid == 0
