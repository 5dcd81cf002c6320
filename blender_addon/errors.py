"""The one error type the add-on shows in Blender's UI (operators report its message, not a traceback)."""


class AddonError(Exception):
    """A problem the user can fix; the message says how."""
