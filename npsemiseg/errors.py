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


def one_line(err: BaseException | str) -> str:
    """The user-facing line of an error (or its message), also when a DataLoader worker re-raised it.

    torch re-creates a worker's exception as ``type(msg)`` with msg = "Caught X in DataLoader worker ...
    Original Traceback ... <module>.X: <message>"; the message is recovered from that last line.
    """
    text = err if isinstance(err, str) else str(err)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return text if isinstance(err, str) else type(err).__name__
    if lines[0].startswith("Caught ") and "Original Traceback" in text:
        head, sep, tail = lines[-1].partition(": ")
        return tail if sep and "Error" in head else lines[-1]
    return lines[0]
