"""Error types that the CLI turns into a one-line message and an exit code."""


class GmptlError(Exception):
    """Base class: a user-facing error whose message says what was wrong and how to fix it."""

    exit_code = 1


class ConfigError(GmptlError, ValueError):
    """The config (file or --set overrides) is invalid."""

    exit_code = 2


class BadInputError(GmptlError, ValueError):
    """Corpus input (label file, audio, metadata) is bad; the message names the file and line."""


class FoldError(GmptlError, ValueError):
    """Folds cannot be built as configured, or a fold leaks speakers."""
