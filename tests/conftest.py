"""Session fixtures every area uses: a throwaway MariaDB, S3 servers (moto, s3rver), a scripted HTTP server.

- `mariadb`: the session's MariaDB instance (tests.servers.mariadb.MariaDB): .port, .socket,
  .create_database(), .drop_database(). Skipped with a reason only when MariaDB is not installed
  (scripts/test installs mariadb-server).
- `mysql_db`: a fresh database with reflector.go's schema, dropped afterwards: .dsn (reflector.go form
  `user:pass@tcp(127.0.0.1:PORT)/name`), .kwargs (pymysql.connect arguments), .query(sql, args) -> rows.
- `mysql_empty_db`: the same without the schema.
- `private_mariadb`: an instance of the test's own, to stop / kill / restart mid-test (.stop(), .kill(),
  .start(), .restart(); port and data survive) with `.test_db` created on it.
- `s3_bucket`: a fresh bucket on the session's moto server (tests.servers.s3.S3Bucket: .endpoint,
  .aws_id, .aws_secret, .region, .bucket, .client(), .keys(), .config_values()).
- `s3_any`: the same, parametrised over moto and s3rver (s3rver skipped when `npm install` has not
  been run: see scripts/test).
- `http_server`: tests.servers.http.ScriptedHTTPServer on a free port; set `.routes[path] = Route(...)`.
- `checkout_run_dir`: held while a test runs an appliance from this checkout's ./run (the quick start) or needs
  none there (appliancectl searches it): one such test at a time across pytest-xdist's processes.
"""
from __future__ import annotations

import fcntl
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# `tests.servers` must import however pytest was started (python -m pytest adds the cwd, bin/pytest not).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.servers import mariadb as mariadb_server  # noqa: E402
from tests.servers.http import ScriptedHTTPServer  # noqa: E402
from tests.servers.s3 import S3Server, s3rver_available  # noqa: E402


def _require_mariadb() -> None:
    if mariadb_server.binaries() is None:
        pytest.skip("MariaDB is not installed (mariadb-install-db, mariadbd); scripts/test installs mariadb-server")


@pytest.fixture(scope="session")
def mariadb_template():
    """An initialised data directory that instances copy (mariadb-install-db runs once per session)."""
    _require_mariadb()
    template = mariadb_server.make_template()
    yield template
    shutil.rmtree(template, ignore_errors=True)


@pytest.fixture(scope="session")
def mariadb(mariadb_template):
    instance = mariadb_server.MariaDB(mariadb_template)
    try:
        instance.start()
        instance.create_user()
        yield instance
    finally:
        instance.destroy()


@pytest.fixture
def mysql_db(mariadb):
    db = mariadb.create_database(with_schema=True)
    yield db
    mariadb.drop_database(db)


@pytest.fixture
def mysql_empty_db(mariadb):
    db = mariadb.create_database(with_schema=False)
    yield db
    mariadb.drop_database(db)


@pytest.fixture
def private_mariadb(mariadb_template):
    instance = mariadb_server.MariaDB(mariadb_template)
    try:
        instance.start()
        instance.create_user()
        instance.test_db = instance.create_database(with_schema=True)
        yield instance
    finally:
        instance.destroy()


def _s3_server(implementation: str):
    server = S3Server(implementation)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_server():
    yield from _s3_server("moto")


@pytest.fixture(scope="session")
def s3rver_server():
    if not s3rver_available():
        pytest.skip("s3rver is not installed: npm install --prefix tests/.s3rver s3rver@3.7.1 (scripts/test does)")
    yield from _s3_server("s3rver")


@pytest.fixture
def s3_bucket(moto_server):
    return moto_server.bucket()


@pytest.fixture(params=["moto", "s3rver"])
def s3_any(request):
    return request.getfixturevalue(f"{request.param}_server").bucket()


@pytest.fixture
def http_server():
    server = ScriptedHTTPServer()
    yield server
    server.close()


@pytest.fixture
def checkout_run_dir():
    checkout = hashlib.sha256(_ROOT.encode()).hexdigest()[:12]
    lock = Path(tempfile.gettempdir()) / f"reflector-checkout-run-{checkout}.lock"
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed, or the process dies
        yield Path(_ROOT) / "run"
