"""User-facing errors: the CLI prints their message on one line and exits with status 2."""


class TeliError(Exception):
    """A problem with the user's input (config, data, checkpoint, run folder) and how to fix it."""
