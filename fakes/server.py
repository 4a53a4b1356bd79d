"""Runs any fake (an ASGI app) under uvicorn in a background thread on 127.0.0.1.

Every stand-in server — billing systems and phone providers — starts the same way:
`with BackgroundServer(app) as server: client(base_url=server.base_url)`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn


class DeliberateDrop(Exception):
    """Raised inside a fake to close the connection without an answer (a simulated fault)."""


class _QuietDeliberateDrops(logging.Filter):
    """Keeps uvicorn from logging a traceback for every connection a fake drops on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DeliberateDrop))


class BackgroundServer:
    def __init__(self, app, port: int = 0, *, name: str = "fake", startup_timeout: float = 10.0) -> None:
        self.app = app
        self.name = name
        self._port = port
        self._startup_timeout = startup_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"{self.name} server is not started")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BackgroundServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this on Linux; without it Nagle + delayed ACK add ~40 ms to each answer.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", self._port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        logging.getLogger("uvicorn.error").addFilter(_QuietDeliberateDrops())
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"{self.name}-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"{self.name} server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
