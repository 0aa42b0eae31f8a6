"""Where a study lives (results/<study>/, SQLite by default) and how to open it.

``--storage`` may also name a database server (``postgresql://...``, ``mysql+pymysql://...``) or
an Optuna journal file (``journal:PATH``, or a path ending in ``.log``/``.journal``) that several
workers share. Shared storages get heartbeats: a trial whose worker stops beating for the grace
period is marked failed and queued again (see ``automl.search.heartbeat``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from automl.errors import ConfigError
from automl.search.heartbeat import Heartbeat, HeartbeatJournalStorage, retry_callback_kwargs
from automl.search.record import StudyRecord, write_study

log = logging.getLogger("automl")
JOURNAL_SUFFIXES = (".log", ".journal")
# the DB-API driver SQLAlchemy picks -> the pip package that provides it
_DRIVERS = {"psycopg2": "psycopg2-binary", "psycopg": "psycopg[binary]", "pg8000": "pg8000",
            "mysqldb": "mysqlclient", "pymysql": "pymysql",
            "mysqlconnector": "mysql-connector-python", "asyncpg": "asyncpg"}


def storage_url(results: Path, study: str, storage: str | None) -> str:
    """``--storage`` if given, else SQLite in ``results/<study>/study.db``."""
    if storage:
        return storage
    return f"sqlite:///{(Path(results) / study / 'study.db').resolve()}"


def journal_path(url: str) -> Path | None:
    """The journal file a ``--storage`` value names, or None for a database URL."""
    if url.startswith("journal:"):
        return Path(url[len("journal:"):].removeprefix("//")).expanduser()
    if "://" not in url and url.endswith(JOURNAL_SUFFIXES):
        return Path(url).expanduser()
    return None


def safe_url(url: str) -> str:
    """A storage URL with any password replaced by ***, for messages."""
    url = re.sub(r"(?i)(password=)[^&;\s]*", r"\1***", url)
    if "://" not in url or "@" not in url.split("://", 1)[1]:
        return url
    scheme, rest = url.split("://", 1)
    slash = rest.find("/", rest.rfind("@"))
    hostpart, tail = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    creds, host = hostpart.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{tail}" if ":" in creds else url


def _password(url: str) -> str | None:
    """The password inside a URL (to scrub it from driver messages), if any."""
    if "://" not in url:
        return None
    rest = url.split("://", 1)[1]
    at = rest.rfind("@", 0, rest.find("/", rest.rfind("@")) if "/" in rest else len(rest))
    creds = rest[:at] if at > 0 else ""
    return creds.split(":", 1)[1] if ":" in creds else None


def _scrub(text: str, url: str) -> str:
    secret = _password(url)
    if secret:
        from urllib.parse import unquote

        for form in {secret, unquote(secret)}:
            text = text.replace(form, "***")
    return re.sub(r"(?i)(password=)[^&;\s]*", r"\1***", text)


def _one_line(exc: BaseException, url: str) -> str:
    """The driver's own first message line (SQLAlchemy wraps it in its own prefix and links)."""
    inner = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    text = lines[0] if lines else type(inner).__name__
    text = re.sub(r"^\([\w.]+\)\s*", "", text)  # "(psycopg2.OperationalError) ..."
    return _scrub(text, url)


def _dialect(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def _driver(url: str) -> str | None:
    """The DB-API module SQLAlchemy uses for ``url`` (its default when the URL names none)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).get_dialect().driver
    except Exception:
        return None


def _open_journal(path: Path, heartbeat: Heartbeat | None) -> Any:

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return HeartbeatJournalStorage(path, heartbeat)
    except OSError as exc:
        raise ConfigError(f"cannot open the study journal {path}: {exc.strerror or exc}; "
                          "expected a writable file on a folder every worker can reach."
                          ) from None


def open_storage(url: str, heartbeat: Heartbeat | None = None) -> Any:
    """An Optuna storage for ``url`` (heartbeats on when ``heartbeat`` is given)."""
    journal = journal_path(url)
    if journal is not None:
        return _open_journal(journal, heartbeat)
    if "://" not in url:
        raise ConfigError(f"--storage {url}: expected a database URL (postgresql://user@host/db, "
                          "mysql+pymysql://user@host/db, sqlite:///FILE) or journal:FILE.")
    import optuna

    kwargs: dict[str, Any] = {}
    if heartbeat is not None:

        kwargs = {"heartbeat_interval": heartbeat.interval, "grace_period": heartbeat.grace,
                  **retry_callback_kwargs(heartbeat.max_retry)}
    engine: dict[str, Any] = {}
    if _dialect(url).startswith("postgresql"):
        engine = {"connect_args": {"connect_timeout": 10}}
    elif _dialect(url).startswith("mysql"):
        engine = {"connect_args": {"connect_timeout": 10}, "pool_recycle": 3600}
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for attempt in range(5):  # workers started at once race to create Optuna's tables
                try:
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine or None,
                                                      **kwargs)
                except Exception as exc:
                    if "duplicate key" not in str(exc) and "already exists" not in str(exc) \
                            or attempt == 4:
                        raise
                    import time

                    time.sleep(1.0 + attempt)
    except ImportError:
        driver = _driver(url)
        package = _DRIVERS.get(driver or "")
        hint = (f"install it with `pip install {package}`" + (
            " (or `pip install 'automl[postgres]'`)" if driver in ("psycopg", "psycopg2")
            else "")) if package else "install the database driver SQLAlchemy needs for it"
        raise ConfigError(f"cannot use the study storage {safe_url(url)}: its database driver "
                          f"{driver or ''} is not installed; {hint}.".replace("  ", " ")
                          ) from None
    except Exception as exc:  # SQLAlchemy raises many kinds; the user needs one sentence
        verb = "connect to" if "://" in url and not url.startswith("sqlite") else "open"
        raise ConfigError(f"cannot {verb} the study storage at {safe_url(url)}: "
                          f"{_one_line(exc, url)}") from None


def open_study(results: Path, study: str, storage: str | None, *, create: bool,
               sampler: Any = None, pruner: Any = None,
               heartbeat: Heartbeat | None = None,
               on_create: Callable[[Any], None] | None = None) -> Any:
    """Load (or with ``create``, create) the Optuna study ``study``; ConfigError if missing.

    ``on_create`` is called with the study when this call created it (of several workers
    started at once, exactly one).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(results, study, storage)
    if create and storage is None:
        try:
            (Path(results) / study).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--results {results}: cannot create the folder "
                              f"{Path(results) / study} ({exc.strerror}).") from None
    elif storage is None and not (Path(results) / study / "study.db").is_file():
        raise ConfigError(_missing(results, study))
    elif not create and journal_path(url) is not None and not journal_path(url).is_file():
        raise ConfigError(f"--storage {url}: there is no journal file {journal_path(url)}; "
                          "expected the journal a search wrote.")
    backend = open_storage(url, heartbeat)
    try:
        if create:
            try:
                made = optuna.create_study(study_name=study, storage=backend, sampler=sampler,
                                           pruner=pruner, direction="maximize")
            except optuna.exceptions.DuplicatedStudyError:
                pass  # it exists: load it below
            else:
                if on_create is not None:
                    on_create(made)
                return made
        return optuna.load_study(study_name=study, storage=backend, sampler=sampler,
                                 pruner=pruner)
    except KeyError:
        raise ConfigError(_missing(results, study, storage)) from None
    except ConfigError:
        raise
    except Exception as exc:  # the server went away between connecting and reading
        raise ConfigError(f"cannot read the study '{study}' from {safe_url(url)}: "
                          f"{_one_line(exc, url)}") from None


def artifact_root(results: str | Path, study_name: str, artifacts: str | None, study: Any,
                  storage: str | None = None, record: bool = False) -> Path:
    """Where kept weights live: ``--artifacts``, else the folder the study recorded (when it is
    reachable here), else next to the study: ``<journal folder>/<study>/trials`` for a journal
    file, ``<results>/<study>/trials`` otherwise. ``record`` notes it in a new study."""
    recorded = StudyRecord.of(study).artifacts
    journal = journal_path(storage) if storage else None
    if artifacts:
        root = Path(artifacts).expanduser().resolve()
    elif recorded and Path(recorded).is_dir():
        root = Path(recorded)
    elif journal is not None:
        root = (journal.parent / study_name / "trials").resolve()
    else:
        root = (Path(results) / study_name / "trials").resolve()
    if record and recorded is None:
        write_study(study, artifacts=str(root))
    return root


def _missing(results: Path, study: str, storage: str | None = None) -> str:
    if storage is not None:
        return (f"there is no study '{study}' in the storage {safe_url(storage)}. Run "
                f"`automl search --storage ... --study {study}` first, or pass the --study of "
                "an existing run.")
    return (f"there is no study '{study}' in {results} (expected {Path(results) / study}/"
            f"study.db). Run `automl search --study {study}` first, or pass --results/--study "
            "of an existing run.")
