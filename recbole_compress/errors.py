"""The errors a user can cause, each with a message that says what is wrong and what is allowed.

The command line turns :class:`ConfigError` (and its subclasses) into one line on stderr and exit code 2, before any
training; :class:`CheckpointError` likewise names the file and what is wrong with it.
"""


class ConfigError(ValueError):
    """A configuration problem found before training starts (bad key, bad value, missing file or dataset)."""


class UnknownModelError(ConfigError):
    """The model name is neither a plugin model nor a RecBole model."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unsafe to load, not a plugin checkpoint, damaged, or made for another model or
    other data."""


class DataError(ConfigError):
    """A dataset that cannot be used: a missing column, an unparsable value, too few interactions."""
