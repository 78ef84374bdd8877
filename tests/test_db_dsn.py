"""reflector.go's DSN form for db_conn."""
import pytest

from appliance.dsn import DSN, DsnError, parse, parse_duration


def test_reflector_go_form():
    dsn = parse("reflector:s3cret@tcp(db.example:3307)/reflector")
    assert (dsn.user, dsn.password, dsn.host, dsn.port, dsn.database) == \
        ("reflector", "s3cret", "db.example", 3307, "reflector")
    kwargs = dsn.pymysql_kwargs()
    assert kwargs["host"] == "db.example" and kwargs["port"] == 3307 and "unix_socket" not in kwargs
    assert kwargs["connect_timeout"] > 0 and kwargs["read_timeout"] > 0 and kwargs["write_timeout"] > 0


def test_defaults_and_unix_socket():
    assert parse("u@tcp(h)/d").port == 3306
    assert (parse("u:p@/d").host, parse("u:p@/d").port) == ("127.0.0.1", 3306)
    sock = parse("u@unix(/run/mysqld/mysqld.sock)/d")
    assert sock.unix_socket == "/run/mysqld/mysqld.sock" and sock.password == ""
    assert "host" not in sock.pymysql_kwargs() and sock.pymysql_kwargs()["unix_socket"] == sock.unix_socket


def test_password_with_at_and_colon():
    dsn = parse("u:p@ss:w@rd@tcp(127.0.0.1:3306)/d")
    assert (dsn.user, dsn.password) == ("u", "p@ss:w@rd")


def test_params_are_used_or_ignored_sanely():
    dsn = parse("u:p@tcp(h:1)/d?parseTime=1&collation=utf8mb4_unicode_ci&interpolateParams=1"
                "&timeout=2s&readTimeout=1m30s&writeTimeout=500ms&charset=latin1")
    assert (dsn.connect_timeout, dsn.read_timeout, dsn.write_timeout, dsn.charset) == (2.0, 90.0, 0.5, "latin1")
    assert parse("u:p@tcp(h:1)/d?tls=false").database == "d"
    with pytest.raises(DsnError, match="tls"):
        parse("u:p@tcp(h:1)/d?tls=true")


@pytest.mark.parametrize("bad, reason", [
    ("", "empty"), ("u:p@tcp(h:1)", "DBNAME"), ("u:p@tcp(h:1)/", "database"), (":p@tcp(h:1)/d", "user"),
    ("u:p@tcp(h:notaport)/d", "port"), ("u:p@tcp(h:70000)/d", "port"), ("u:p@udp(h:1)/d", "network"),
    ("u:p@tcp(h:1/d", "address"), ("u:p@tcp(h:1)/d?timeout=5", "duration"),
])
def test_bad_dsns_are_one_line_errors_without_the_password(bad, reason):
    with pytest.raises(DsnError, match=reason) as info:
        parse(bad)
    assert "\n" not in str(info.value) and ":p@" not in str(info.value)


def test_str_masks_the_password():
    assert str(parse("u:topsecret@tcp(h:1)/d")) == "u:***@tcp(h:1)/d"
    assert "topsecret" not in repr(str(DSN("u", "topsecret", "d")))


def test_durations():
    assert parse_duration("1h2m3s") == 3723 and parse_duration("250ms") == 0.25
    for bad in ("", "5", "s", "5x", "1s2"):
        with pytest.raises(DsnError):
            parse_duration(bad)
