"""One error type for problems the user can fix.

Every check on user input raises `SafeSteerError` with a single line that names the file, field or value
and says what to do. The CLI prints that line (no traceback) and exits with status 2; Python callers can
catch it like any `ValueError`.
"""

from __future__ import annotations


class SafeSteerError(ValueError):
    """A user-fixable problem, described in one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))  # always one line, whatever the caller wrote
