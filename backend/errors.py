"""User-facing errors: each message names the file or value, what is wrong, and what to do."""


class AvatarError(Exception):
    """Base class for errors shown to the user as a one-line message (no traceback)."""


class InputError(AvatarError, ValueError):
    """A photo, mask, parameter file or value the user gave is unusable."""


class BodyModelFileError(AvatarError, ValueError):
    """A body-model file (SMPL .pkl/.npz, the open-body asset) is missing or malformed."""
