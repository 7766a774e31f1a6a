"""Errors that the CLI reports as one line with exit code 2."""


class UserError(Exception):
    """Bad input: the message names the cause and how to fix it."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, carrying the one line the CLI prints (what was kept, if anything)."""

    def __init__(self, message: str = "interrupted; nothing was written") -> None:
        super().__init__(message)
        self.message = message
