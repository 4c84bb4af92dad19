"""The one exception type for bad user input.

Anything the user can fix (a missing directory, an invalid setting, a checkpoint
that does not fit) raises `IlctError`; the CLI prints its message as one line and
exits with status 2. Everything else is a bug and keeps its traceback.
"""


class IlctError(Exception):
    """A problem with the user's input, reported as one line and exit code 2."""
