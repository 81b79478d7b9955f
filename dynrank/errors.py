"""User-facing errors: a bad config or input ends the run with one line that says what to fix."""


class DynrankError(Exception):
    """An error the user can fix (bad config, missing or malformed data, diverged training).

    The entry point prints ``error: <message>`` on one line and exits with status 2; nothing
    already written (checkpoints, results) is touched.
    """


class ConfigError(DynrankError):
    pass


class DataError(DynrankError):
    pass


class TrainingError(DynrankError):
    pass


class RunInUseError(DynrankError):
    """Another process is training the same run (its directory is locked)."""
