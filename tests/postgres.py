"""A throwaway PostgreSQL cluster on a free loopback port, for tests.

    with PostgresCluster(tmp_path) as pg:
        pg.create_database("mlflow", owner="mlflow", password="secret")
        conn = psycopg2.connect(pg.dsn("mlflow", user="mlflow", password="secret"))
        store = pg.store_uri("mlflow", user="mlflow")   # postgresql+psycopg2://mlflow@127.0.0.1:PORT/mlflow

Uses the server binaries of the distribution's packages (``initdb``/``pg_ctl`` on PATH or
under /usr/lib/postgresql/*/bin). ``initdb`` refuses to run as root, so as root the cluster
runs as the ``postgres`` user (via ``runuser``/``su``) in a private directory that user can
reach; pytest's own temp dirs sit under a 0700 root-owned directory it cannot enter. Unix
sockets go to that directory too, never to /var/run/postgresql. TCP is loopback only.
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PostgresCluster", "PostgresUnavailable", "find_postgres_bin"]

SERVICE_USER = "postgres"
SUPERUSER = "postgres"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine (install the ``postgresql`` package)."""


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.name  # /usr/lib/postgresql/<version>/bin
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def find_postgres_bin() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl`` (newest Debian version wins over PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for directory in candidates:
        if all(os.access(Path(directory, tool), os.X_OK) for tool in ("initdb", "pg_ctl")):
            return Path(directory)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or under "
        "/usr/lib/postgresql/*/bin; install them with `apt-get install -y postgresql`"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresCluster:
    """A private PostgreSQL cluster: ``start()`` runs initdb + pg_ctl, ``stop()`` removes it.

    By default TCP logins on 127.0.0.1 are trusted. ``require_password=True`` makes them
    scram-sha-256, as in the official postgres image, so clients must send the role's
    password (roles get one from :meth:`create_database`). Unix-socket logins, used by the
    helpers here as superuser, are always trusted.
    """

    def __init__(self, root: Path | str, port: int | None = None, require_password: bool = False):
        self.root = Path(root)
        self.require_password = require_password
        self.bin = find_postgres_bin()
        self.port = port or _free_port()
        self.as_root = os.geteuid() == 0
        self.base: Path | None = None
        self.proc_started = False

    # -- paths and connection strings ------------------------------------------------

    @property
    def datadir(self) -> Path:
        return self._base() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._base() / "sock"

    @property
    def log_path(self) -> Path:
        return self._base() / "postgres.log"

    @property
    def uri(self) -> str:
        """SQLAlchemy URI of the superuser's ``postgres`` database over loopback TCP."""
        return self.store_uri("postgres")

    def store_uri(self, db: str, user: str = SUPERUSER, password: str | None = None) -> str:
        """``postgresql+psycopg2://user[:password]@127.0.0.1:PORT/db`` (MLflow's store form)."""
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql+psycopg2://{auth}@127.0.0.1:{self.port}/{db}"

    def dsn(self, db: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        """libpq keyword DSN over loopback TCP, for ``psycopg2.connect``."""
        dsn = f"host=127.0.0.1 port={self.port} dbname={db} user={user}"
        return dsn if password is None else f"{dsn} password={password}"

    def socket_dsn(self, db: str = "postgres") -> str:
        """Superuser DSN over the private Unix socket (always trusted)."""
        return f"host={self.socket_dir} port={self.port} dbname={db} user={SUPERUSER}"

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> PostgresCluster:
        """initdb and start the server; returns once it accepts connections."""
        base = self._base()
        host_auth = "scram-sha-256" if self.require_password else "trust"
        self._run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                f"--auth-host={host_auth}",
                "-E",
                "UTF8",
                "--no-locale",
            ],
            cwd=base,
        )
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.socket_dir}",
                # A throwaway cluster: durability costs time and buys nothing here.
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
            ]
        )
        # Set before pg_ctl returns: if it times out the postmaster may still be coming up.
        self.proc_started = True
        self._run(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.log_path),
                "-o",
                options,
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ],
            cwd=base,
        )
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown, SIGKILL as a last resort) and delete its files."""
        if self.proc_started:
            try:
                self._run(
                    [
                        str(self.bin / "pg_ctl"),
                        "-D",
                        str(self.datadir),
                        "-m",
                        "fast",
                        "-w",
                        "-t",
                        "30",
                        "stop",
                    ],
                    cwd=self._base(),
                )
            except (RuntimeError, subprocess.TimeoutExpired):
                self._kill_postmaster()
            self.proc_started = False
        if self.base is not None and self.as_root:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def __enter__(self) -> PostgresCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- administration -------------------------------------------------------------------

    def create_database(self, db: str, owner: str | None = None, password: str | None = None):
        """Create ``db`` (and the login role ``owner`` with ``password`` if given)."""
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(self.socket_dsn())
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with conn.cursor() as cur:
                if owner is not None:
                    cur.execute(
                        sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(owner)),
                        [password],
                    )
                    cur.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(db), sql.Identifier(owner)
                        )
                    )
                else:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        finally:
            conn.close()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- internals ----------------------------------------------------------------------

    def _base(self) -> Path:
        if self.base is None:
            if self.as_root:
                # pytest's tmp dirs are under a 0700 root directory the postgres user can't enter.
                self.base = Path(tempfile.mkdtemp(prefix="gradwatch-pg-"))
                account = pwd.getpwnam(SERVICE_USER)
                os.chown(self.base, account.pw_uid, account.pw_gid)
            else:
                self.base = self.root / "postgres"
                self.base.mkdir(parents=True, exist_ok=True)
            for sub in ("sock",):
                path = self.base / sub
                path.mkdir(exist_ok=True)
                if self.as_root:
                    account = pwd.getpwnam(SERVICE_USER)
                    os.chown(path, account.pw_uid, account.pw_gid)
        return self.base

    def _as_service_user(self, cmd: list[str]) -> list[str]:
        if not self.as_root:
            return cmd
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError as exc:
            raise PostgresUnavailable(
                f"running as root but there is no {SERVICE_USER!r} user to run PostgreSQL as; "
                "install the distribution's postgresql package (it creates one)"
            ) from exc
        if shutil.which("runuser"):
            return ["runuser", "-u", SERVICE_USER, "--", *cmd]
        return ["su", SERVICE_USER, "-s", "/bin/sh", "-c", shlex.join(cmd)]

    def _run(self, cmd: list[str], cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        result = subprocess.run(
            self._as_service_user(cmd),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{shlex.join(cmd)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
                f"\n--- {self.log_path} ---\n{self.log_tail()}"
            )

    def _kill_postmaster(self) -> None:
        pid_file = self.datadir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
