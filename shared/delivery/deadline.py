"""HTTP through urllib with one deadline for the whole exchange: connect, send, response.

A socket time-out bounds a single read, so a receiver that sends one byte now and
then holds a delivery for as long as it likes. Here every connect, send and read
first sets the socket's time-out to what is left of the deadline (never more than
the per-step time-out), so the exchange ends by the deadline whatever the peer does.
urllib stays in charge of everything else (proxies from the environment, redirects).
"""

from __future__ import annotations

import functools
import http.client
import io
import socket
import time
import urllib.request
from typing import Any


class Deadline:
    """A point in monotonic time, and the longest one step may wait."""

    def __init__(self, seconds: float, step_s: float) -> None:
        self.at = time.monotonic() + seconds
        self.step_s = step_s

    def remaining(self) -> float:
        """Seconds the next step may take; raises `TimeoutError` once the deadline has passed."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError("delivery deadline passed")
        return min(self.step_s, left)

    def arm(self, sock: socket.socket) -> None:
        sock.settimeout(self.remaining())


class _DeadlineReader(io.RawIOBase):
    """The socket's own reader (`makefile`), armed before every read."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)  # keeps the socket open while we read
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._deadline.arm(self._sock)
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """A connected socket as http.client uses it (`sendall`, `makefile`), under a deadline."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def sendall(self, data: Any) -> None:
        self._deadline.arm(self._sock)  # one time-out for the whole sendall (Python >= 3.5)
        self._sock.sendall(data)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        if mode != "rb":
            raise ValueError(f"only binary reads are armed, not mode {mode!r}")
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def __getattr__(self, name: str) -> Any:  # close, fileno, setsockopt, …
        return getattr(self._sock, name)


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def connect(self) -> None:
        self.timeout = self.deadline.remaining()  # connect (and a proxy tunnel) within it
        super().connect()
        self.sock = _DeadlineSocket(self.sock, self.deadline)


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def connect(self) -> None:
        # The TLS handshake counts its time-out across the whole handshake, not per read.
        self.timeout = self.deadline.remaining()
        super().connect()
        self.sock = _DeadlineSocket(self.sock, self.deadline)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPConnection, deadline=self.deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPSConnection, deadline=self.deadline), req)


def build_opener(deadline: Deadline, *handlers: Any) -> urllib.request.OpenerDirector:
    """urllib's opener with `handlers`, whose HTTP and HTTPS connections keep `deadline`."""
    return urllib.request.build_opener(*handlers, _HTTPHandler(deadline), _HTTPSHandler(deadline))
