"""The errors the command line reports as one clear line, and the documented exit codes (README "Exit codes").

A leaf module: every layer may raise :class:`CLIError` without importing the command line itself.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1  # unexpected failure
EXIT_USAGE = 2  # bad arguments (argparse)
EXIT_INPUT = 3  # bad input file/folder: missing, empty, undecodable
EXIT_REFUSED = 4  # input refused by the guard under --strict
EXIT_MODEL = 5  # model bundle cannot be loaded
EXIT_UNAVAILABLE = 6  # serve: port busy or not permitted, audit database or kept-uploads folder unusable
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class CLIError(Exception):
    """An error the CLI reports as one clear line and an exit code, without a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.exit_code = exit_code
