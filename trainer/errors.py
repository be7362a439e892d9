"""Errors a user can fix: the CLI prints their message as one line, without a traceback."""


class TrainerError(Exception):
    """A problem with the user's input, reported as one line naming the bad value and what is valid."""


class ConfigError(TrainerError):
    """A config value is out of range, unknown, or inconsistent with another."""


class DataError(TrainerError):
    """A data set cannot be found, downloaded or read."""
