"""``deltafeed status``: print the streaming status of a running deltafeed, read from its API."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import msgspec

from deltafeed.cli import Subcommands
from deltafeed.cli.run import api_token
from deltafeed.model import BadInput, Unavailable


def add_parser(sub: Subcommands) -> None:
    """The ``status`` sub-command and its options."""
    stat = sub.add_parser("status", help="print the streaming status of a running deltafeed")
    stat.add_argument(
        "--api", default="http://127.0.0.1:8080", help="the API's address (default http://127.0.0.1:8080)"
    )
    stat.add_argument("--api-token", help="token, if the API needs one (or DELTAFEED_API_TOKEN)")
    stat.add_argument("--format", choices=("table", "json"), default="table")
    stat.add_argument(
        "--probe",
        choices=("live", "ready"),
        help="only ask GET /livez or /readyz: exit 0 when it answers 200, else 1 with the reasons"
        " (a container's HEALTHCHECK, a script waiting for start-up)",
    )


def probe(base: str, which: str, headers: dict[str, str]) -> int:
    """``GET /livez`` or ``/readyz``: 0 and one line on stdout when it answers 200, else 1 and one
    line on stderr saying why. Never 2: Docker reserves it in a HEALTHCHECK, where anything but 0
    or 1 is an error of the check itself."""
    import aiohttp

    url = f"{base}/{which}z"

    async def fetch() -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), headers=headers) as http,
            http.get(url) as resp,
        ):
            return resp.status, await resp.json(content_type=None)

    try:
        status, body = asyncio.run(fetch())
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        print(f"deltafeed status: cannot reach {url} ({exc or type(exc).__name__})", file=sys.stderr)
        return 1
    if status == 200:
        print(f"{url}: {body.get('status', 'ok')}")
        return 0
    why = "; ".join(body.get("reasons", [])) or body.get("error") or f"HTTP {status}"
    print(f"deltafeed status: {url} answered {status}: {why}", file=sys.stderr)
    return 1


def command(args: argparse.Namespace) -> int:
    import aiohttp

    try:
        token = api_token(args.api_token)
    except BadInput as exc:
        if args.probe is None:
            raise
        print(f"deltafeed status: {exc}", file=sys.stderr)
        return 1  # a probe answers 0 or 1 only
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = args.api.rstrip("/")
    if args.probe is not None:
        return probe(base, args.probe, headers)

    async def fetch() -> tuple[dict[str, Any], dict[str, Any]]:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as http:
            out = []
            for path in ("/streaming/status", "/health"):
                async with http.get(base + path) as resp:
                    body = await resp.json(content_type=None)
                    if resp.status in (401, 403):
                        raise BadInput(
                            f"{base} refused us ({body.get('error', resp.status)}); pass --api-token "
                            "or set DELTAFEED_API_TOKEN"
                        )
                    if resp.status not in (200, 503):
                        raise BadInput(f"{base}{path} answered {resp.status}: {body}")
                    out.append(body)
            return out[0], out[1]

    try:
        status, health = asyncio.run(fetch())
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise Unavailable(  # exit 69: it may be starting; the same command may work later
            f"cannot reach deltafeed at {base} ({exc or type(exc).__name__}); is `deltafeed run` "
            "running with its API on? Pass --api URL"
        ) from None
    if args.format == "json":
        sys.stdout.write(msgspec.json.encode({"status": status, "health": health}).decode() + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    from deltafeed.engine.status import EngineStatus

    report = msgspec.convert(status, EngineStatus)  # the schema the server sends
    table = Table(title=f"deltafeed at {base}: {health.get('status')}")
    cols = ("instrument", "connected", "last message age (s)", "messages/s", "gaps", "backfilled")
    for col in cols:
        table.add_column(col, justify="left" if col == "instrument" else "right")
    for name, st in report.instruments.items():
        age = st.last_message_age_s
        table.add_row(
            name,
            "yes" if st.connected else "NO",
            "-" if age is None else f"{age:.1f}",
            f"{st.messages_per_s:.1f}",
            str(st.gaps),
            str(st.repaired),
        )
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    for venue, v in report.venues.items():
        console.print(f"{venue}: {v.connections} connection(s), {v.reconnects} reconnects")
    for name, b in report.books.items():
        resyncs = " ".join(f"{k}={n}" for k, n in b.resyncs.items()) or "none"
        state = (
            f"in sync, bid {b.best_bid:g} ask {b.best_ask:g} spread {b.spread:g}"
            if b.in_sync and b.best_bid is not None and b.best_ask is not None and b.spread is not None
            else "[red]OUT OF SYNC[/red]"
        )
        console.print(f"{name} book: {state}; resyncs {resyncs}; {b.out_of_sync_s:.1f} s out of sync")
    for reason in health.get("reasons", []):
        console.print(f"[red]unhealthy:[/red] {reason}")
    return 0
