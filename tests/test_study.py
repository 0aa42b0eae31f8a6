"""Opening study storages: journal paths, password-free messages, one-line connection errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from helpers import run_cli

from automl.errors import ConfigError
from automl.search.study import journal_path, open_storage, open_study, safe_url

SECRET = "hunter2-Secret%40x"  # a password as it goes into a URL (@ percent-encoded)


@pytest.mark.parametrize("url, expected", [
    ("postgresql://user:hunter2@dbhost:5432/automl", "postgresql://user:***@dbhost:5432/automl"),
    ("postgresql://user@dbhost/automl", "postgresql://user@dbhost/automl"),
    (f"mysql+pymysql://me:{SECRET}@db.example.org/optuna",
     "mysql+pymysql://me:***@db.example.org/optuna"),
    ("postgresql://me:pa:ss@w@dbhost/automl", "postgresql://me:***@dbhost/automl"),
    ("postgresql://dbhost/automl?user=u&password=hunter2&sslmode=require",
     "postgresql://dbhost/automl?user=u&password=***&sslmode=require"),
    ("sqlite:////tmp/a@b/study.db", "sqlite:////tmp/a@b/study.db"),
    ("journal:/shared/run.journal", "journal:/shared/run.journal"),
])
def test_safe_url_hides_only_the_password(url: str, expected: str) -> None:
    assert safe_url(url) == expected


@pytest.mark.parametrize("value, expected", [
    ("journal:/shared/a.db", Path("/shared/a.db")),
    ("journal:///shared/a.log", Path("/shared/a.log")),
    ("/shared/study.journal", Path("/shared/study.journal")),
    ("runs/study.log", Path("runs/study.log")),
    ("sqlite:///study.log", None),
    ("postgresql://u@h/db", None),
])
def test_journal_path(value: str, expected: Path | None) -> None:
    assert journal_path(value) == expected


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_connection_is_one_line_naming_the_host_without_the_password() -> None:
    port = _closed_port()
    url = f"postgresql://automl:{SECRET}@127.0.0.1:{port}/automl"
    with pytest.raises(ConfigError) as info:
        open_storage(url)
    message = str(info.value)
    assert message.startswith(f"cannot connect to the study storage at "
                              f"postgresql://automl:***@127.0.0.1:{port}/automl: ")
    assert "Connection refused" in message and "\n" not in message
    assert SECRET not in message and "sqlalche.me" not in message


def test_the_cli_prints_the_connection_error_and_exits_2() -> None:
    port = _closed_port()
    err = run_cli("leaderboard", "--storage", f"postgresql://automl:{SECRET}@127.0.0.1:{port}/db",
                  "--study", "flowers", code=2).err
    assert err.startswith(f"error: cannot connect to the study storage at "
                          f"postgresql://automl:***@127.0.0.1:{port}/db: ")
    assert len(err.strip().splitlines()) == 1 and SECRET not in err


def test_a_missing_driver_names_the_package_to_install() -> None:
    with pytest.raises(ConfigError) as info:
        open_storage(f"mysql+pymysql://me:{SECRET}@db.example.org/optuna")
    assert str(info.value) == (
        "cannot use the study storage mysql+pymysql://me:***@db.example.org/optuna: its database "
        "driver pymysql is not installed; install it with `pip install pymysql`.")


def test_a_missing_study_in_a_storage_names_the_storage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    open_study(tmp_path, "exists", url, create=True)
    with pytest.raises(ConfigError, match=r"there is no study 'missing' in the storage sqlite:///"):
        open_study(tmp_path, "missing", url, create=False)
    with pytest.raises(ConfigError, match=r"there is no journal file .*none\.journal"):
        open_study(tmp_path, "x", f"journal:{tmp_path / 'none.journal'}", create=False)


def test_a_storage_that_is_neither_url_nor_journal_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        open_storage("/shared/study.db")
    assert str(info.value) == ("--storage /shared/study.db: expected a database URL "
                               "(postgresql://user@host/db, mysql+pymysql://user@host/db, "
                               "sqlite:///FILE) or journal:FILE.")
