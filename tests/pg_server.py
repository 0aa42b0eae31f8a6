"""A throwaway PostgreSQL server for tests, started by pytest-postgresql's executor from pg_ctl.

PostgreSQL refuses to run as root (CI and these machines run as root), so as root the server
runs as the ``postgres`` system user (created by Debian's ``postgresql`` package) through a
``runuser`` wrapper around pg_ctl, with its files in a folder that user owns. The role the tests
connect as has a password and logs in with scram-sha-256 over TCP, like a real server.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

USER, PASSWORD, DATABASE = "automl", "s3cr3t-Pa55word", "automl"


@dataclass(frozen=True)
class Server:
    host: str
    port: int

    def url(self, password: str = PASSWORD, database: str = DATABASE) -> str:
        return f"postgresql://{USER}:{password}@{self.host}:{self.port}/{database}"


def find_pg_ctl() -> str | None:
    """pg_ctl on PATH, else Debian's newest /usr/lib/postgresql/*/bin/pg_ctl."""
    found = shutil.which("pg_ctl")
    if found:
        return os.path.realpath(found)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                        key=lambda p: int(Path(p).parent.parent.name))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _retry(connect: Callable[[], Any], seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return connect()
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _wait_for_password_checks(port: int, seconds: float = 30) -> None:
    """Return once the server refuses the test role a wrong password (pg_hba.conf reloaded)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            psycopg.connect(host="127.0.0.1", port=port, user=USER, password="wrong",
                            dbname=DATABASE).close()
        except psycopg.OperationalError as exc:
            if "password authentication failed" in str(exc):
                return
        time.sleep(0.2)
    raise RuntimeError("the PostgreSQL server did not start checking passwords")


@contextmanager
def postgres_server() -> Iterator[Server]:
    """Start PostgreSQL on a free port; stop it and delete its files afterwards."""
    pg_ctl = find_pg_ctl()
    if pg_ctl is None:
        message = ("PostgreSQL is not installed (no pg_ctl); `apt-get install postgresql` "
                   "(.ci/run does it)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from pytest_postgresql.executors import PostgreSQLExecutor

    base = Path(tempfile.mkdtemp(prefix="automl-pg-"))
    executable = pg_ctl
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        executable = str(base / "pg_ctl")
        Path(executable).write_text(f'#!/bin/sh\ncd /\nexec runuser -u postgres -- {pg_ctl} "$@"\n')
        os.chmod(executable, 0o755)
    port = _free_port()
    executor = PostgreSQLExecutor(executable=executable, host="127.0.0.1", port=port,
                                  datadir=str(base / "data"), unixsocketdir=str(base),
                                  logfile=str(base / "server.log"), startparams="-w",
                                  dbname=DATABASE, user="postgres", timeout=120)
    executor.start()
    try:
        # the port opens a moment before the server accepts logins ("starting up")
        with _retry(lambda: psycopg.connect(host="127.0.0.1", port=port, user="postgres",
                                            dbname="postgres", autocommit=True)) as conn:
            conn.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
            conn.execute(f"CREATE DATABASE {DATABASE} OWNER {USER}")
        # the test role must log in with its password; the fixture's own superuser may not
        hba = base / "data" / "pg_hba.conf"
        hba.write_text(f"host all {USER} 127.0.0.1/32 scram-sha-256\n"
                       "host all postgres 127.0.0.1/32 trust\n"
                       "local all postgres trust\n")
        subprocess.run([executable, "reload", "-D", str(base / "data")], check=True,
                       capture_output=True)
        _wait_for_password_checks(port)  # a reload is asynchronous
        yield Server("127.0.0.1", port)
    finally:
        executor.stop()
        shutil.rmtree(base, ignore_errors=True)
