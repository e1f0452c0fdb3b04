"""The user-error base class: a mistake the user can fix (a config key, a data line, a path, a server).

The command line (`uniapl.cli.main`) turns a `UserError` into exit status 2 and one line naming the key,
or the file and line; any other exception is a bug and keeps its traceback (`--debug` shows the
traceback of user errors too). Subclasses also derive from the builtin type callers used to catch
(ConfigError and DataError are ValueErrors), so existing `except ValueError` code keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave us; the message names the key, or the file and line, and the fix."""


__all__ = ["UserError"]
