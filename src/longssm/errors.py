"""The one exception type the command line turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user (a flag, a file, a config key): reported as one line, no traceback."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (library errors can span many lines)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
