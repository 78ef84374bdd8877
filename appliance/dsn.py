"""MySQL DSNs in reflector.go's (Go driver's) form: `user:pass@tcp(host:port)/db?params`.

Accepted: `user:pass@tcp(host:port)/db`, `user@tcp(host)/db` (port 3306), `user:pass@/db` (tcp to
127.0.0.1:3306, the Go driver's default), `user@unix(/path/mysqld.sock)/db`. As in the Go driver the
password may contain `@` and `:` (the last `@` ends it). Query parameters: `timeout`, `readTimeout`,
`writeTimeout` (Go durations: `5s`, `500ms`, `1m30s`) and `charset` are used; reflector.go's own
`parseTime`, `collation`, `interpolateParams` and other driver tuning are accepted and ignored; `tls`
other than `false` is refused, so a DSN that asks for encryption never silently connects in the clear.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from urllib.parse import parse_qsl

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_WRITE_TIMEOUT = 30.0

_ADDRESS_RE = re.compile(r"(?P<net>[a-z0-9]+)(?:\((?P<addr>.*)\))?")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class DsnError(ValueError):
    """A DSN that cannot be used; the message never contains the password."""


@dataclass(frozen=True)
class DSN:
    user: str
    password: str
    database: str
    host: str = "127.0.0.1"
    port: int = 3306
    unix_socket: str = ""
    charset: str = "utf8mb4"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    write_timeout: float = DEFAULT_WRITE_TIMEOUT

    def pymysql_kwargs(self) -> dict:
        """Keyword arguments for pymysql.connect (timeouts included: a hung server never blocks forever)."""
        kwargs = {"user": self.user, "password": self.password, "database": self.database,
                  "charset": self.charset, "connect_timeout": self.connect_timeout,
                  "read_timeout": self.read_timeout, "write_timeout": self.write_timeout}
        if self.unix_socket:
            kwargs["unix_socket"] = self.unix_socket
        else:
            kwargs["host"], kwargs["port"] = self.host, self.port
        return kwargs

    def with_timeouts(self, connect: float | None = None, read: float | None = None,
                      write: float | None = None) -> DSN:
        return replace(self, connect_timeout=connect if connect is not None else self.connect_timeout,
                       read_timeout=read if read is not None else self.read_timeout,
                       write_timeout=write if write is not None else self.write_timeout)

    def __str__(self) -> str:
        where = f"unix({self.unix_socket})" if self.unix_socket else f"tcp({self.host}:{self.port})"
        return f"{self.user}:***@{where}/{self.database}"


def parse_duration(text: str) -> float:
    """A Go duration (`5s`, `1m30s`, `250ms`) in seconds."""
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise DsnError(f"invalid duration {text!r} (expected e.g. 5s, 500ms, 1m30s)")
    return total


def _host_port(addr: str) -> tuple[str, int]:
    if addr.startswith("["):  # [ipv6]:port
        host, _, rest = addr[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = addr.rpartition(":") if ":" in addr else (addr, "", "")
    try:
        port = int(port_text) if port_text else 3306
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise DsnError(f"invalid port in address {addr!r}") from None
    return host or "127.0.0.1", port


def parse(text: str) -> DSN:
    """Parse a reflector.go db_conn value (DsnError with a one-line reason on anything unusable)."""
    text = text.strip()
    if not text:
        raise DsnError("empty MySQL DSN (set db_conn: USER:PASSWORD@tcp(HOST:PORT)/DBNAME)")
    slash = text.rfind("/")
    if slash < 0:
        raise DsnError("invalid MySQL DSN: missing /DBNAME (expected USER:PASSWORD@tcp(HOST:PORT)/DBNAME)")
    head, tail = text[:slash], text[slash + 1:]
    database, _, query = tail.partition("?")
    if not database:
        raise DsnError("invalid MySQL DSN: empty database name")
    at = head.rfind("@")
    credentials, address = (head[:at], head[at + 1:]) if at >= 0 else ("", head)
    user, _, password = credentials.partition(":")
    if not user:
        raise DsnError("invalid MySQL DSN: missing user (expected USER:PASSWORD@tcp(HOST:PORT)/DBNAME)")
    values: dict = {"user": user, "password": password, "database": database}
    if address:
        match = _ADDRESS_RE.fullmatch(address)
        if not match:
            raise DsnError(f"invalid MySQL DSN address {address!r}: expected tcp(HOST:PORT) or unix(/PATH)")
        net, addr = match.group("net"), match.group("addr") or ""
        if net == "tcp":
            values["host"], values["port"] = _host_port(addr) if addr else ("127.0.0.1", 3306)
        elif net == "unix":
            values["unix_socket"] = addr or "/tmp/mysql.sock"
        else:
            raise DsnError(f"unsupported MySQL DSN network {net!r} (tcp or unix)")
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "timeout":
            values["connect_timeout"] = parse_duration(value)
        elif key == "readTimeout":
            values["read_timeout"] = parse_duration(value)
        elif key == "writeTimeout":
            values["write_timeout"] = parse_duration(value)
        elif key == "charset":
            values["charset"] = value.split(",")[0]
        elif key == "tls" and value.lower() not in ("false", "0", ""):
            raise DsnError("MySQL DSN asks for tls, which this appliance does not support; use a local socket")
    return DSN(**values)
