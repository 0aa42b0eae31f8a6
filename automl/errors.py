"""Error types. The CLI prints an AutoMLError's message and exits non-zero, without a traceback."""


class AutoMLError(Exception):
    """Base class for every error whose message is meant for the user."""


class ConfigError(AutoMLError):
    """A search space, flag or option is invalid; nothing has been trained yet."""


class DataError(AutoMLError):
    """The data given with --data cannot be used as it is."""


class WeightsError(AutoMLError):
    """Pretrained weights cannot be found, read or trusted."""


class TrialFailed(AutoMLError):
    """One trial cannot go on; it is recorded as FAIL and the search continues."""
