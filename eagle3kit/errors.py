"""The exceptions eagle3kit raises for problems a user can fix.

The CLI prints a :class:`UserError` as one clear message (no traceback) and exits with
status 2; anything else is a bug and keeps its traceback.
"""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (a library's often goes on for pages), or its
    type's name when it has none: for quoting it inside a :class:`UserError`."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class Eagle3KitError(Exception):
    """Base class of every error eagle3kit raises on purpose."""


class UserError(Eagle3KitError):
    """A problem with the user's input, options, files or environment, with what to do."""


class PluginError(UserError):
    """A plugin failed to load, or two plugins disagree (for example on a source name)."""


class RecordError(ValueError):
    """Raised by a ``convert_to_unified`` hook for a raw record it cannot read.

    The message says what is wrong with the record (``"messages[2].content is not a
    string (got int)"``); eagle3kit adds the source, the file or repository and the row.
    A plain ``ValueError``, ``KeyError`` or ``TypeError`` is treated the same way.
    """
