"""Waits: hold a request until a job has ended (or a deadline passes), woken by Redis, not by polling it.

Every transition that ends a job (finished, failed, stopped, canceled: the
work script's finish, ServiceJob.set_status, the poison and fire scripts) publishes
the status on the job's ended channel (service.core.keys.ended_channel).
One WaitHub per process listens on one pub/sub connection for the channels
of the jobs its requests wait for, and wakes those requests; each then reads
its job again. A message can be missed (it was published before the
subscription, or the connection dropped), never trusted: a wait reads the
job once subscribed, and every wait reads again after a reconnect. A waiting
request holds a thread parked on an Event, no Redis connection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from redis import Redis
from redis.client import PubSub
from redis.exceptions import RedisError

from service.core.connection import connect_like
from service.core.keys import ended_channel
from service.core.outage import Outage

log = logging.getLogger(__name__)
T = TypeVar("T")

# The longest wait a request may ask for.
MAX_WAIT_SECONDS = 60.0
# How long the listener reads before it takes new subscriptions (it cannot be woken while reading).
LISTEN_SECONDS = 0.05
# How long a wait gives the listener to confirm its subscription before reading the job again anyway.
SUBSCRIBE_SECONDS = 1.0
# Threads of a web process that never wait (WEB_THREADS less these may): they keep answering other requests.
THREADS_NOT_WAITING = 16


def max_waits(threads: int) -> int:
    """The waits one web process holds at once with `threads` threads; past them a wait answers at once."""
    return max(0, threads - THREADS_NOT_WAITING)


@dataclass
class Waited(Generic[T]):
    """What a wait found: the value last read, and whether the wait was held (False: no room, or stopping)."""

    value: T
    held: bool = True


class WaitHub:
    """The waits of one process and the one pub/sub connection that wakes them (started on first use)."""

    def __init__(self, connection: Redis, max_waits: int) -> None:
        self.connection = connection
        self.max_waits = max_waits
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}  # channel -> the waits' events
        self._confirmed: dict[str, threading.Event] = {}  # channel -> set once Redis confirmed the subscription
        self._work = threading.Event()  # the listener has something to do
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def waiting(self) -> int:
        with self._lock:
            return sum(len(events) for events in self._waiters.values())

    def wait(self, job_id: str, seconds: float, read: Callable[[], T], ended: Callable[[T], bool]) -> Waited[T]:
        """Return `read()` once `ended(read())`, or when `seconds` have passed, whichever comes first."""
        found = read()
        if ended(found):
            return Waited(found)
        deadline = time.monotonic() + seconds
        channel, event = ended_channel(job_id), threading.Event()
        confirmed = self._join(channel, event)
        if confirmed is None:
            return Waited(found, held=False)
        try:
            confirmed.wait(min(SUBSCRIBE_SECONDS, seconds))
            while True:
                event.clear()
                found = read()  # after the subscription: an end published before it is read here
                remaining = deadline - time.monotonic()
                if ended(found) or remaining <= 0 or self._stopping:
                    return Waited(found)
                event.wait(remaining)
        finally:
            self._leave(channel, event)

    def stop(self) -> None:
        """End every wait now (each answers with its job as it is) and take no new ones: the process is stopping."""
        self._stopping = True
        self._wake_all()
        self._work.set()

    def _join(self, channel: str, event: threading.Event) -> threading.Event | None:
        with self._lock:
            if self._stopping or sum(len(e) for e in self._waiters.values()) >= self.max_waits:
                return None
            self._waiters.setdefault(channel, set()).add(event)
            confirmed = self._confirmed.setdefault(channel, threading.Event())
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._listen, name="waits", daemon=True)
                self._thread.start()
        self._work.set()
        return confirmed

    def _leave(self, channel: str, event: threading.Event) -> None:
        with self._lock:
            events = self._waiters.get(channel, set())
            events.discard(event)
            if not events:
                self._waiters.pop(channel, None)
                self._confirmed.pop(channel, None)
        self._work.set()

    def _wake_all(self) -> None:
        with self._lock:
            for events in self._waiters.values():
                for event in events:
                    event.set()

    def _listen(self) -> None:
        """The listener thread: keep the subscriptions equal to the channels waited for, and wake their waits."""
        outage = Outage(log, "waits")
        client = connect_like(self.connection)
        pubsub: PubSub | None = None
        while not self._stopping:
            try:
                if pubsub is None:
                    pubsub = client.pubsub()
                if not self._sync(pubsub):
                    self._work.wait()
                    self._work.clear()
                    continue
                self._dispatch(pubsub.get_message(timeout=LISTEN_SECONDS))
                outage.up()
            except RedisError as exc:
                pubsub = self._drop(pubsub)
                outage.down(exc)
        self._drop(pubsub)

    def _sync(self, pubsub: PubSub) -> bool:
        """Subscribe to new channels, leave old ones; return True while any channel is waited for."""
        with self._lock:
            wanted = set(self._waiters)
        held = {name.decode() if isinstance(name, bytes) else name for name in pubsub.channels}
        if wanted - held:
            pubsub.subscribe(*(wanted - held))
        if held - wanted:
            pubsub.unsubscribe(*(held - wanted))
        return bool(wanted)

    def _dispatch(self, message: dict | None) -> None:
        if message is None or message["type"] not in ("subscribe", "message"):
            return
        channel = message["channel"].decode()
        with self._lock:
            if message["type"] == "subscribe":  # the waits read again: an end published before it was missed
                confirmed = self._confirmed.get(channel)
                if confirmed is not None:
                    confirmed.set()
            for event in self._waiters.get(channel, ()):
                event.set()

    def _drop(self, pubsub: PubSub | None) -> None:
        """Close a broken listener connection; every wait reads its job again (a message may have been lost)."""
        if pubsub is not None:
            try:
                pubsub.close()
            except RedisError:
                pass
        with self._lock:
            for confirmed in self._confirmed.values():
                confirmed.clear()
        self._wake_all()
        return None
