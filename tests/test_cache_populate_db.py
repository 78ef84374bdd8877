"""`prism populate-db` as a real subprocess against a real MariaDB."""
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

from appliance.blob import blob_hash
from appliance.cache.scan import blob_path
from tests.servers.ports import free_port

REPO = Path(__file__).resolve().parents[1]


def prism(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "appliance.cli.prism", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def one_line_error(result: subprocess.CompletedProcess, code: int, contains: str) -> None:
    assert result.returncode == code, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("prism: ") and contains in lines[0], result.stderr


def cache_dir(root: Path, n: int) -> dict[str, int]:
    blobs = {}
    for i in range(n):
        data = b"blob %d;" % i * (i + 1)
        hash_ = blob_hash(data)
        os.makedirs(root / hash_[:2], exist_ok=True)
        Path(blob_path(str(root), hash_)).write_bytes(data)
        blobs[hash_] = len(data)
    (root / "tmp").mkdir()
    (root / "tmp" / blob_hash(b"partial")).write_bytes(b"half a blob")
    (root / "README").write_text("not a blob")
    (root / hash_[:2] / "notes.txt").write_text("not a blob either")
    return blobs


def test_records_every_blob_with_its_size_and_can_be_rerun(mysql_db, tmp_path):
    store = tmp_path / "cache"
    blobs = cache_dir(store, 40)
    # one blob is already known, not stored, with a recent access time: it becomes stored and keeps its time
    known = next(iter(blobs))
    recent = dt.datetime(2030, 1, 2, 3, 4, 5)
    mysql_db.query("INSERT INTO blob_ (hash, is_stored, length, last_accessed_at) VALUES (%s, 0, 1, %s)",
                   (known, recent))
    result = prism("--conf", "none", "populate-db", "--store-path", str(store), "--localdb-conn", mysql_db.dsn,
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "recorded 40 blobs" in result.stdout and f"({sum(blobs.values())} bytes)" in result.stdout
    assert "1 other file skipped" in result.stdout
    rows = {h: (stored, length, accessed) for h, stored, length, accessed in
            mysql_db.query("SELECT hash, is_stored, length, last_accessed_at FROM blob_")}
    assert set(rows) == set(blobs)  # tmp/, README and notes.txt are not blobs
    assert all(rows[h][0] == 1 and rows[h][1] == size for h, size in blobs.items())
    assert rows[known][2] == recent
    ages = {accessed for h, (_, _, accessed) in rows.items() if h != known}
    assert len(ages) == 1 and dt.datetime.now(dt.UTC).replace(tzinfo=None) - ages.pop() > dt.timedelta(hours=23)

    again = prism("--conf", "none", "populate-db", "--store-path", str(store), "--localdb-conn", mysql_db.dsn,
                  cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert mysql_db.query("SELECT COUNT(*), SUM(length) FROM blob_ WHERE is_stored = 1")[0] == (
        40, sum(blobs.values()))


def test_usage_errors(tmp_path):
    one_line_error(prism("--conf", "none", "populate-db", cwd=tmp_path), 2, "store-path must be defined")
    one_line_error(prism("--conf", "none", "populate-db", "--store-path", str(tmp_path / "nope"), cwd=tmp_path),
                   2, "is not a directory")
    one_line_error(prism("--conf", "none", "populate-db", "--store-path", str(tmp_path), "--localdb-conn",
                         "not a dsn", cwd=tmp_path), 2, "localdb_conn")


def test_unreachable_database_is_a_one_line_failure(tmp_path):
    store = tmp_path / "cache"
    cache_dir(store, 3)
    dsn = f"u:secret@tcp(127.0.0.1:{free_port()})/reflector?timeout=2s"
    result = prism("--conf", "none", "populate-db", "--store-path", str(store), "--localdb-conn", dsn, cwd=tmp_path)
    one_line_error(result, 1, "127.0.0.1")
    assert "secret" not in result.stderr
