"""The one exception type for errors a user can cause (bad file, unknown config, ...).

Every CLI catches it, prints ``<prog>: error: <message>`` on one line and exits 2;
anything else is a bug and keeps its traceback.
"""


class M2DetError(Exception):
    """A user-facing error: the message is one line that says what to fix."""
