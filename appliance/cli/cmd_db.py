"""`prism db init|check [--db-conn DSN]`: create reflector.go's schema in an empty database, or check for it.

`init` refuses a database that has any table (it never alters or re-creates existing tables, so it
cannot damage a reflector.go database); `check` exits 1 when a table of the schema is missing.
The database is `db_conn` from the config unless --db-conn is given.
"""
from __future__ import annotations

import argparse

from appliance.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandError, load_config
from appliance.db import SCHEMA_TABLES, Database, DatabaseError
from appliance.dsn import DsnError


def _database(args: argparse.Namespace) -> Database:
    config = load_config(args, {"db_conn": args.db_conn} if args.db_conn is not None else None)
    if not config.db_conn:
        raise CommandError("no database configured: set db_conn in the config or pass --db-conn", EXIT_USAGE)
    try:
        return Database.from_dsn(config.db_conn)
    except DsnError as exc:
        raise CommandError(f"db_conn: {exc}", EXIT_USAGE) from None


def run_init(args: argparse.Namespace) -> int:
    db = _database(args)
    try:
        db.apply_schema()
    except DatabaseError as exc:
        raise CommandError(str(exc)) from None
    finally:
        db.close()
    print(f"created tables {', '.join(SCHEMA_TABLES)} in {db.dsn}")
    return EXIT_OK


def run_check(args: argparse.Namespace) -> int:
    db = _database(args)
    try:
        tables = set(db.tables())
    except DatabaseError as exc:
        raise CommandError(str(exc)) from None
    finally:
        db.close()
    missing = [t for t in SCHEMA_TABLES if t not in tables]
    if missing:
        print(f"{db.dsn}: missing tables {', '.join(missing)} (prism db init creates them in an empty database)")
        return EXIT_FAILURE
    print(f"{db.dsn}: schema present ({', '.join(SCHEMA_TABLES)})")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    return run_init(args) if args.verb == "init" else run_check(args)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "db", help="create or check the MySQL schema",
        description="init: apply reflector.go's schema (schema.sql) to an empty database; it refuses a database "
                    "that has any table. check: exit 1 unless every table of the schema exists.")
    p.add_argument("verb", choices=("init", "check"), help="init or check")
    p.add_argument("--db-conn", metavar="DSN",
                   help="MySQL DSN USER:PASSWORD@tcp(HOST:PORT)/DBNAME (default: db_conn from the config)")
    p.set_defaults(run=run)
