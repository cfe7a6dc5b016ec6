"""What every replica shares: binding its aiohttp app to HOST:PORT, and running until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol, Self

from aiohttp import web

from deltafeed.model import BadInput
from deltafeed.replicas.faults import FaultSchedule

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def netloc(host: str, port: int) -> str:
    """``host:port`` as it goes in a URL (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def listen(handler: Handler, host: str, port: int, *, shutdown_timeout: float = 60.0,
                 method: str = "GET") -> tuple[web.AppRunner, int]:
    """Serve every ``method`` request (``"*"``: any) with ``handler`` on ``host:port`` (0 = a free
    port); returns the runner and the bound port. A port that cannot be bound is :class:`BadInput`
    naming the fix."""
    app = web.Application()
    app.router.add_route(method, "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        await runner.cleanup()
        raise BadInput(f"cannot listen on {netloc(host, port)}: {e.strerror or e}; choose another --host/--port"
                       " (port 0 picks a free one)") from None
    bound: int = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    return runner, bound


class ReplicaBase:
    """What every replica does alike: run as an async context manager, and count injected faults."""

    faults: FaultSchedule | None
    host: str
    port: int  # the real one once started

    @property
    def netloc(self) -> str:
        return netloc(self.host, self.port)

    async def start(self) -> str:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def faults_injected(self) -> dict[str, int]:
        """Faults injected so far, per configured kind (zeros included); empty without faults."""
        return {} if self.faults is None else self.faults.counts()


class Replica(Protocol):
    async def start(self) -> str: ...

    async def stop(self) -> None: ...

    def summary(self) -> str: ...


async def serve(replica: Replica, banner: Callable[[str], list[str]] | None = None) -> None:
    """Run ``replica`` until SIGINT or SIGTERM: print ``listening on URL`` first (or ``banner(url)``'s
    lines), and its summary last."""
    url = await replica.start()
    for line in banner(url) if banner is not None else [f"listening on {url}"]:
        print(line, flush=True)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    sigs = (signal.SIGINT, signal.SIGTERM)
    for s in sigs:
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(s, done.set)
    try:
        await done.wait()
    finally:
        for s in sigs:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(s)
        await replica.stop()
        print(replica.summary(), file=sys.stdout, flush=True)
