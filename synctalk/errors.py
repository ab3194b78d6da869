"""Errors that are the user's to fix (bad input, bad config, missing files).

The command line prints them as one line, without a stack trace, unless
``HYDRA_FULL_ERROR=1`` is set.
"""


class UserError(Exception):
    """A problem with the input or the configuration, explained in its message."""
