"""The one error type a user can cause; the CLI prints it without a traceback."""


class UserError(ValueError):
    """Bad input from the user: the message names the bad value and what would be valid."""
