"""The one exception type for mistakes a user can make (paths, files, config values), and how commands show it.

The CLI turns it into a single line on stderr and exit code 2; everything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem the user can fix: bad path, corrupt file, invalid config value, broken split file.

    The message must name the file, line or config key at fault.
    """


class ConfigError(UserError):
    """An invalid configuration key or value (the message starts with the dotted key)."""


class CommandFailed(Exception):
    """A command ran but failed in a way it can explain: ``lines`` (one per problem) on stderr, exit ``code``."""

    def __init__(self, lines: list[str], code: int = 1) -> None:
        super().__init__("\n".join(lines))
        self.lines, self.code = list(lines), code


def _reraised(lines: list[str], text: str) -> bool:
    """Whether ``text`` is another process's traceback wrapped around the real message (on its last line)."""
    torch_worker = lines[0].startswith("Caught ") and "Original Traceback" in text
    ray_task = "ray::" in lines[0] and "pid=" in lines[0] and len(lines) > 1
    return torch_worker or ray_task


def one_line(err: BaseException | str) -> str:
    """The user-facing line of an error (or its message), also when another process re-raised it.

    torch re-creates a DataLoader worker's exception as ``type(msg)`` with msg = "Caught X in DataLoader worker
    ... Original Traceback ... <module>.X: <message>"; Ray's task errors read "ray::<task>() (pid=..., ip=...)",
    the traceback, then "<module>.X: <message>". The message is recovered from that last line.
    """
    text = err if isinstance(err, str) else str(err)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return text if isinstance(err, str) else type(err).__name__
    if _reraised(lines, text):
        head, sep, tail = lines[-1].partition(": ")
        return tail if sep and "Error" in head else lines[-1]
    return lines[0]


def run_guarded(command: Callable[[], int | None], prog: str, interrupted: str = "interrupted") -> int:
    """Run a command's body: its exit code, or 2 with ``prog: error: <one line>`` for a UserError, 130 on Ctrl-C,
    ``CommandFailed.code`` with ``prog: error: <line>`` per line."""
    try:
        return int(command() or 0)
    except CommandFailed as e:
        for line in e.lines:
            print(f"{prog}: error: {line}", file=sys.stderr)
        return e.code
    except UserError as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
