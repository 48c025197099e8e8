"""User errors: bad configuration, data or command-line input.

The CLI turns a ``UserError`` into one line on stderr and exit code 2 (no traceback); anything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """An error the user can fix; the message names the field (or file and row) and the fix."""
