"""The one exception type the command line turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user (a flag, a file, a config key): reported as one line, no traceback."""
