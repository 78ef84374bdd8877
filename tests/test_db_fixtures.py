"""The test fixtures themselves: a real MariaDB with reflector.go's schema, restartable mid-test."""
import pymysql
import pytest


def test_fresh_database_has_the_schema(mysql_db):
    tables = {row[0] for row in mysql_db.query("SHOW TABLES")}
    assert tables == {"blob_", "stream", "stream_blob", "blocked"}
    assert mysql_db.dsn.startswith("appliance:") and f"/{mysql_db.name}" in mysql_db.dsn


def test_each_test_gets_its_own_database(mysql_db, mariadb):
    other = mariadb.create_database()
    try:
        mysql_db.query("INSERT INTO blocked (hash) VALUES (%s)", ("a" * 96,))
        assert other.query("SELECT COUNT(*) FROM blocked") == [(0,)]
    finally:
        mariadb.drop_database(other)


def test_private_instance_stops_and_restarts_with_its_data(private_mariadb):
    db = private_mariadb.test_db
    db.query("INSERT INTO blocked (hash) VALUES (%s)", ("b" * 96,))
    private_mariadb.stop()
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(**db.kwargs, connect_timeout=1)
    private_mariadb.start()
    assert db.query("SELECT hash FROM blocked") == [("b" * 96,)]
