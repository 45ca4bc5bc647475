"""Exception types of the reference.

Every error a user can cause (a bad checkpoint, a bad image, no face, bad keypoints, an
unsupported option) has its own type, and its message names the problem and the fix. The CLI
turns any `BilayerError` into a one-line message and a non-zero exit code.
"""


class BilayerError(Exception):
    """Base class of every error the toolchain raises on purpose."""


class ConfigError(BilayerError):
    """A configuration value is invalid, unsupported, or contradicts another source."""


class CheckpointError(BilayerError):
    """A checkpoint is missing, unreadable, or does not fit the architecture."""


class InputError(BilayerError):
    """An input image, mask or keypoint array has the wrong shape, range or values."""


class NoFaceError(InputError):
    """The landmark detector found no face in an image."""
