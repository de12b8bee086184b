"""The one exception type for mistakes a user can make (paths, files, config values).

The CLI turns it into a single line on stderr and exit code 2; everything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: bad path, corrupt file, invalid config value, broken split file.

    The message must name the file, line or config key at fault.
    """


class ConfigError(UserError):
    """An invalid configuration key or value (the message starts with the dotted key)."""
