"""`prism db init|check` as a real subprocess against a real MariaDB."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def prism(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli.prism", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def test_init_applies_the_schema_once_then_refuses(mysql_empty_db, tmp_path):
    conf = tmp_path / "config.json"
    conf.write_text(json.dumps({"db_conn": mysql_empty_db.dsn}))  # reflector.go's config.json key
    assert prism("db", "check", "--conf", str(conf)).returncode == 1
    done = prism("db", "init", "--conf", str(conf))
    assert done.returncode == 0, done.stderr
    assert {t for (t,) in mysql_empty_db.query("SHOW TABLES")} == {"blob_", "stream", "stream_blob", "blocked"}
    assert mysql_empty_db.query("SHOW CREATE TABLE stream")[0][1].count("FOREIGN KEY") == 1
    mysql_empty_db.query("INSERT INTO blocked (hash) VALUES (%s)", ("c" * 96,))
    again = prism("db", "init", "--conf", str(conf))
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "not empty" in again.stderr and "appliance-test" not in again.stderr
    assert mysql_empty_db.query("SELECT COUNT(*) FROM blocked") == [(1,)]  # untouched
    checked = prism("db", "check", "--conf", "none", "--db-conn", mysql_empty_db.dsn)
    assert checked.returncode == 0 and "schema present" in checked.stdout


def test_usage_errors(tmp_path):
    missing = prism("db", "init", "--conf", "none")
    assert missing.returncode == 2 and "db_conn" in missing.stderr
    bad = prism("db", "init", "--conf", "none", "--db-conn", "nonsense")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert prism("db", "drop", "--conf", "none").returncode == 2
