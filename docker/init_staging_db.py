#!/usr/bin/env python3
"""Create the staging database and its login role on the Airflow PostgreSQL (idempotent).

Run by ``airflow-init`` (docker/airflow-init.sh) on every ``docker compose up``, so it also
works on an existing PostgreSQL volume, where the image's ``/docker-entrypoint-initdb.d`` would
never run again. It connects as the metadata-database user (``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``,
a superuser in the bundled ``postgres`` service) and:

* creates the role ``STAGING_DB_USER`` (LOGIN) or, if it exists, resets its password to
  ``STAGING_DB_PASSWORD`` (so rotating the password in ``.env`` takes effect on the next start);
* creates the database ``STAGING_DB_NAME`` owned by that role if it does not exist.

Tables are created and migrated by the product itself, never here. On an external PostgreSQL
where that user may not create roles or databases, create both by hand (docs/operations.md) and
set ``M365_3CX_SKIP_STAGING_DB_INIT=true``.
"""

from __future__ import annotations

import argparse
import os
import sys


def ensure_staging_database(admin_url: str, db_name: str, user: str, password: str) -> list[str]:
    """Create role and database when missing; return what was done, one line per step."""
    import psycopg2
    from psycopg2 import sql
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    if not url.drivername.startswith("postgresql"):
        raise SystemExit(f"init_staging_db: the metadata database is {url.drivername}, not PostgreSQL")
    done: list[str] = []
    conn = psycopg2.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        dbname=url.database or "postgres",
    )
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
            if cur.fetchone():
                cur.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD %s").format(sql.Identifier(user)), (password,))
                done.append(f"role {user} exists; password set from STAGING_DB_PASSWORD")
            else:
                cur.execute(sql.SQL("CREATE ROLE {} WITH LOGIN PASSWORD %s").format(sql.Identifier(user)), (password,))
                done.append(f"role {user} created")
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db_name,))
            if cur.fetchone():
                done.append(f"database {db_name} exists")
            else:
                cur.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'").format(
                        sql.Identifier(db_name), sql.Identifier(user)
                    )
                )
                done.append(f"database {db_name} created, owner {user}")
            cur.execute(
                sql.SQL("GRANT ALL PRIVILEGES ON DATABASE {} TO {}").format(
                    sql.Identifier(db_name), sql.Identifier(user)
                )
            )
    finally:
        conn.close()
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default=os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"))
    parser.add_argument("--db-name", default=os.environ.get("STAGING_DB_NAME", "m365_3cx_staging"))
    parser.add_argument("--user", default=os.environ.get("STAGING_DB_USER", "m365_3cx"))
    parser.add_argument("--password", default=os.environ.get("STAGING_DB_PASSWORD"))
    args = parser.parse_args(argv)
    if not args.admin_url:
        parser.error("no --admin-url and AIRFLOW__DATABASE__SQL_ALCHEMY_CONN is not set")
    if not args.password:
        parser.error("no --password and STAGING_DB_PASSWORD is not set")
    for line in ensure_staging_database(args.admin_url, args.db_name, args.user, args.password):
        print(f"init_staging_db: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
