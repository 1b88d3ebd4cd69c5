"""Errors meant for people: the launcher prints them as one line and exits non-zero."""


class TriforgeError(Exception):
    """A problem with the user's input (config, data, checkpoint, environment) and its fix."""


class ConfigError(TriforgeError):
    pass


class DataError(TriforgeError):
    pass


class CheckpointError(TriforgeError):
    pass
