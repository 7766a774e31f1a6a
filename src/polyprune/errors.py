"""Errors that the CLI reports as one line with exit code 2."""


class UserError(Exception):
    """Bad input: the message names the cause and how to fix it."""
