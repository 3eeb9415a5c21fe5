"""The one exception type the CLI turns into a single line on stderr and exit code 2."""

from __future__ import annotations


class FtvarError(Exception):
    """A user-facing error: bad input, missing files, a cache that is not there.

    The message must say what is wrong and what to do about it; the CLI prints it as one line.
    """


class StudyError(FtvarError):
    """The study file or an override is invalid."""


class RecordError(FtvarError):
    """A record file is corrupt, foreign, or does not match the schema."""
