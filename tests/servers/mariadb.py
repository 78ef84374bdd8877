"""A throwaway MariaDB instance: its own data directory, socket and free 127.0.0.1 port.

Started with `mariadbd --no-defaults`, so nothing of the machine's MariaDB configuration or data is
used or touched. As root the server runs as the `mysql` user (mariadbd refuses to run as root), which is
why the directory lives directly under /tmp: pytest's own tmp dirs are 0700 and not traversable by it.
"""
from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pymysql

from appliance.db import schema_statements
from tests.servers.ports import free_port, wait_until

USER, PASSWORD = "appliance", "appliance-test"
INNODB_FILES = ["--innodb-log-file-size=16M"]  # small files: quick to copy; the same at every start
_names = itertools.count(1)


def binaries() -> tuple[str, str] | None:
    """(mariadb-install-db, mariadbd) paths, or None when MariaDB is not installed."""
    install = shutil.which("mariadb-install-db")
    server = shutil.which("mariadbd") or ("/usr/sbin/mariadbd" if os.path.exists("/usr/sbin/mariadbd") else None)
    return (install, server) if install and server else None


@dataclass(frozen=True)
class TestDatabase:
    """One database on the instance, with the app user's credentials."""

    __test__ = False  # not a pytest test class
    name: str
    host: str
    port: int

    @property
    def dsn(self) -> str:
        """reflector.go's DSN form, as in config.json's db_conn."""
        return f"{USER}:{PASSWORD}@tcp({self.host}:{self.port})/{self.name}"

    @property
    def kwargs(self) -> dict:
        """pymysql.connect keyword arguments for the same database."""
        return {"host": self.host, "port": self.port, "user": USER, "password": PASSWORD, "database": self.name}

    def connect(self) -> pymysql.connections.Connection:
        return pymysql.connect(**self.kwargs, autocommit=True)

    def query(self, sql: str, args: tuple | list | None = None) -> list[tuple]:
        """Run one statement on a fresh connection and return all rows (for assertions)."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()


def _private_dir(prefix: str) -> Path:
    """A new directory under /tmp that the server's user owns (or at least can enter)."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    if os.geteuid() == 0:
        mysql = pwd.getpwnam("mysql")
        os.chown(base, mysql.pw_uid, mysql.pw_gid)
    base.chmod(0o755)
    return base


def _user_args() -> list[str]:
    return ["--user=mysql"] if os.geteuid() == 0 else []


def _tmpdir(base: Path) -> str:
    """The instance's own tmpdir: a starting mariadbd deletes every `#sql*` file in its tmpdir (left-over
    temporary tables), which with the default /tmp were those of any other instance running or being
    initialised at the time (several test processes under pytest-xdist)."""
    tmp = base / "tmp"
    tmp.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        mysql = pwd.getpwnam("mysql")
        os.chown(tmp, mysql.pw_uid, mysql.pw_gid)
    return f"--tmpdir={tmp}"


def make_template() -> Path:
    """A freshly initialised data directory (`<returned dir>/data`) to copy: 0.2 s instead of 2 s per instance."""
    found = binaries()
    if found is None:
        raise RuntimeError("mariadb-install-db / mariadbd not found (apt-get install mariadb-server)")
    base = _private_dir("appliance-mariadb-template-")
    result = subprocess.run(
        [found[0], "--no-defaults", *_user_args(), f"--datadir={base / 'data'}", *INNODB_FILES, _tmpdir(base),
         "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"],
        capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"mariadb-install-db failed: {result.stderr.strip()[-500:]}")
    return base


class MariaDB:
    """Start, stop, restart a private mariadbd; create and drop databases on it."""

    def __init__(self, template: Path | None = None) -> None:
        found = binaries()
        if found is None:
            raise RuntimeError("mariadb-install-db / mariadbd not found (apt-get install mariadb-server)")
        self.mariadbd = found[1]
        self.template = template
        self.base = _private_dir("appliance-mariadb-")
        self.datadir = self.base / "data"
        self.socket = self.base / "mysqld.sock"
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._initialised = False

    # --- lifecycle ------------------------------------------------------------------------------------
    def _initialise(self) -> None:
        template = self.template or make_template()
        try:
            subprocess.run(["cp", "-a", str(template / "data"), str(self.datadir)], check=True, timeout=60)
        finally:
            if self.template is None:
                shutil.rmtree(template, ignore_errors=True)
        self._initialised = True

    def start(self) -> None:
        """Start the server (the first time: initialise the data directory and pick a free port)."""
        if not self._initialised:
            self._initialise()
        for attempt in range(3):
            if not self.port or attempt:
                self.port = free_port()
            log = open(self.base / "mariadbd.log", "ab")
            self.process = subprocess.Popen(
                [self.mariadbd, "--no-defaults", *_user_args(), f"--datadir={self.datadir}", *INNODB_FILES,
                 _tmpdir(self.base),
                 f"--socket={self.socket}", f"--pid-file={self.base / 'mysqld.pid'}", f"--port={self.port}",
                 "--bind-address=127.0.0.1", "--skip-name-resolve", "--skip-log-bin",
                 "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=2",
                 "--character-set-server=utf8mb4", "--max-connections=500"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            try:
                wait_until(lambda: self.process.poll() is not None or self._answers(), 60, "mariadbd to start")
            except TimeoutError:
                self.stop()
                raise
            if self.process.poll() is None:
                return
        tail = (self.base / "mariadbd.log").read_text(errors="replace")[-800:]
        raise RuntimeError(f"mariadbd did not start: {tail}")

    def _answers(self) -> bool:
        try:
            self.admin().close()
            return True
        except pymysql.err.OperationalError:
            return False

    def stop(self) -> None:
        """Clean shutdown (TERM), waiting for the process to exit."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        """Crash the server (KILL): connections die without a goodbye, as when MySQL's host dies."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    # --- databases ------------------------------------------------------------------------------------
    def admin(self) -> pymysql.connections.Connection:
        """A root connection over the instance's own socket."""
        return pymysql.connect(unix_socket=str(self.socket), user="root", password="", autocommit=True,
                               connect_timeout=2)

    def _admin_run(self, *statements: str) -> None:
        conn = self.admin()
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
        finally:
            conn.close()

    def create_user(self) -> None:
        """The app user, allowed everything on this throwaway instance, over TCP and the socket."""
        self._admin_run(*(f"CREATE USER IF NOT EXISTS '{USER}'@'{host}' IDENTIFIED BY '{PASSWORD}'"
                          for host in ("127.0.0.1", "localhost")),
                        *(f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'{host}'" for host in ("127.0.0.1", "localhost")))

    def create_database(self, with_schema: bool = True) -> TestDatabase:
        """A new uniquely named database, with reflector.go's schema applied unless with_schema=False."""
        name = f"t{os.getpid()}_{next(_names)}"
        self._admin_run(f"CREATE DATABASE `{name}`")
        db = TestDatabase(name, "127.0.0.1", self.port)
        if with_schema:
            conn = db.connect()
            try:
                with conn.cursor() as cur:
                    for statement in schema_statements():
                        cur.execute(statement)
            finally:
                conn.close()
        return db

    def drop_database(self, db: TestDatabase) -> None:
        self._admin_run(f"DROP DATABASE IF EXISTS `{db.name}`")
