"""The one user-facing error type: the CLI prints its message, without a traceback."""


class RsdError(ValueError):
    """Bad input (a file, key, value or registry name) with a message that names it."""
