"""Where a study lives (results/<study>/, SQLite by default) and how to open it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from automl.errors import ConfigError

log = logging.getLogger("automl")


def storage_url(results: Path, study: str, storage: str | None) -> str:
    """``--storage`` if given, else SQLite in ``results/<study>/study.db``."""
    if storage:
        return storage
    return f"sqlite:///{(Path(results) / study / 'study.db').resolve()}"


def safe_url(url: str) -> str:
    """A storage URL with any password replaced by ***, for messages."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def _storage(url: str) -> Any:
    import optuna

    try:
        return optuna.storages.RDBStorage(url, heartbeat_interval=None)
    except Exception as exc:  # SQLAlchemy raises many kinds; the user needs one sentence
        raise ConfigError(f"cannot open the study storage {safe_url(url)}: "
                          f"{str(exc).splitlines()[0]}") from None


def open_study(results: Path, study: str, storage: str | None, *, create: bool,
               sampler: Any = None, pruner: Any = None) -> Any:
    """Load (or with ``create``, create) the Optuna study ``study``; ConfigError if missing."""
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
    backend = _storage(url)
    if create:
        return optuna.create_study(study_name=study, storage=backend, sampler=sampler,
                                   pruner=pruner, direction="maximize", load_if_exists=True)
    try:
        return optuna.load_study(study_name=study, storage=backend, sampler=sampler,
                                 pruner=pruner)
    except KeyError:
        raise ConfigError(_missing(results, study)) from None


def _missing(results: Path, study: str) -> str:
    return (f"there is no study '{study}' in {results} (expected {Path(results) / study}/"
            f"study.db). Run `automl search --study {study}` first, or pass --results/--study "
            "of an existing run.")
