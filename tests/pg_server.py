"""A private PostgreSQL server for tests that need to stop and start one (outages, restarts).

Usage::

    with PrivatePostgres() as pg:        # initdb (once per process) and start on a free port
        store = await PostgresStore.open(pg.url)
        pg.stop()                        # a real shutdown (fast mode): clients see their connections drop
        ...
        pg.start()                       # same port and data; returns once it accepts connections

The server runs from ``/usr/lib/postgresql/<version>/bin`` (or ``$PG_BINDIR``), as the ``postgres`` user when
the tests run as root (PostgreSQL refuses to run as root), with trust authentication on 127.0.0.1 only
and durability switched off (fsync, synchronous_commit) since the data is thrown away. ``initdb`` runs
once per process into a template directory; each server copies it (~50 ms instead of ~1-2 s).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from types import TracebackType

from helpers import free_port

_template_lock = threading.Lock()
_template: Path | None = None


def find_bindir() -> Path | None:
    """Directory of ``initdb``/``pg_ctl``: ``$PG_BINDIR``, else the newest /usr/lib/postgresql/*/bin."""
    env = os.environ.get("PG_BINDIR")
    if env:
        return Path(env) if (Path(env) / "pg_ctl").exists() else None
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def available() -> bool:
    """Whether a private server can be started here (binaries present; a ``postgres`` user when root)."""
    if find_bindir() is None:
        return False
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False
    return True


def _owner() -> tuple[int, int] | None:
    """(uid, gid) the server runs as when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def _chown_tree(path: Path, owner: tuple[int, int]) -> None:
    for root, dirs, files in os.walk(path):
        os.chown(root, *owner)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), *owner)


def _run(bindir: Path, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [str(bindir / args[0]), *args[1:]]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout, cwd="/")


def _template_dir(bindir: Path) -> Path:
    """A fresh ``initdb`` result, made once per process and removed at exit."""
    global _template
    with _template_lock:
        if _template is None:
            base = Path(tempfile.mkdtemp(prefix="deltafeed-pgtemplate-"))
            os.chmod(base, 0o755)
            owner = _owner()
            if owner:
                os.chown(base, *owner)
            data = base / "data"
            _run(
                bindir,
                "initdb",
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            )
            atexit.register(shutil.rmtree, base, True)
            _template = data
        return _template


class PrivatePostgres:
    """One throwaway PostgreSQL server on 127.0.0.1, stoppable and restartable on the same port.

    ``url`` (user ``postgres``, database ``postgres``, no password) stays valid across :meth:`stop` and
    :meth:`start`. :meth:`cleanup` (or leaving the ``with`` block) stops the server and deletes its
    files; servers still running at interpreter exit are stopped too.
    """

    def __init__(self, port: int | None = None, *, bindir: str | os.PathLike[str] | None = None) -> None:
        found = Path(bindir) if bindir is not None else find_bindir()
        if found is None:
            raise RuntimeError("no PostgreSQL binaries found (set PG_BINDIR to the directory holding pg_ctl)")
        self.bindir = found
        self.port = port or free_port()
        self.base = Path(tempfile.mkdtemp(prefix="deltafeed-pg-"))
        os.chmod(self.base, 0o755)
        self.data = self.base / "data"
        self.logfile = self.base / "server.log"
        self.running = False
        self._owner = _owner()
        shutil.copytree(_template_dir(self.bindir), self.data, symlinks=True)
        os.chmod(self.data, 0o700)
        if self._owner:
            _chown_tree(self.base, self._owner)
        atexit.register(self.cleanup)

    @property
    def url(self) -> str:
        """Where to connect: ``postgresql://postgres@127.0.0.1:<port>/postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server and return once it accepts connections (no-op when running)."""
        if self.running:
            return
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=50 -c shared_buffers=32MB"
        )
        res = _run(
            self.bindir,
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout_s)),
            "start",
            check=False,
            timeout=timeout_s + 10,
        )
        if res.returncode != 0:
            raise RuntimeError(f"PostgreSQL on port {self.port} did not start: {res.stderr.strip()}\n{self.log()}")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Shut the server down and return once it is gone (no-op when stopped).

        ``fast`` (default) ends every session at once, as an operator's restart does; ``immediate`` is a
        crash (no checkpoint; the next start recovers from the WAL).
        """
        if not self.running:
            return
        _run(self.bindir, "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop", check=False)
        self.running = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def cleanup(self) -> None:
        """Stop the server and delete its files; safe to call twice."""
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"PrivatePostgres(port={self.port}, {state}, data={self.data})"
