"""The one exception type for a user's mistake: the CLI prints its message, never a traceback."""


class UserError(Exception):
    """Bad input from the user (a config value, a file, a checkpoint); the message says what to fix."""
