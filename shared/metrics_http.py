"""The `/metrics` HTTP server a process runs beside its loop, started by one call."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.registry import Collector


class MetricsPortError(ValueError):
    """The metrics port cannot be bound; the message names the setting to change."""


@dataclass
class MetricsServer:
    """A running metrics server; `close` stops it and frees the port."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(
    registry: Collector, port: int, setting: str, addr: str = "0.0.0.0"
) -> MetricsServer | None:
    """Serve `registry` on `port` in a daemon thread; port 0 serves nothing (returns None).

    Args:
        registry: what `/metrics` shows.
        port: the TCP port, 0 = metrics off.
        setting: how an operator changes the port (e.g. `SCANGUARD_WORKER__METRICS_PORT`),
            named in the error.
        addr: the address to bind; all interfaces, so Prometheus reaches it in a pod.

    Raises:
        MetricsPortError: the port is taken (or not ours to bind), in one line.
    """
    if not port:
        return None
    try:
        server, thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise MetricsPortError(
            f"{setting}: cannot serve metrics on port {port} ({exc.strerror or exc}); "
            "give each process on a host its own port, or 0 to turn metrics off"
        ) from None
    return MetricsServer(server, thread)
