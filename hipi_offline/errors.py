"""Errors that mean "the user's input is wrong" (exit code 2 at the command line)."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a malformed spec, a missing field, a damaged store.

    The message is one line that names the offending field or file and, where
    there is one, the fix. The command line prints it and exits with code 2.
    """
