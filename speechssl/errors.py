"""The one base of user errors: the CLI prints such an error's message on one line and exits 1.

A user error names what was expected, what was found and the file, line or utterance. Anything
that is not one (a bug) keeps its traceback.
"""

from __future__ import annotations


class SpeechSSLError(Exception):
    """An error in the user's input, files or machine that the message fully explains."""


class OutputExistsError(SpeechSSLError):
    """An output path holds something this command did not write (or an input, or an experiment)."""


class WriteFailedError(SpeechSSLError):
    """Writing a file failed (disk full, quota, read-only file system); the temp files are gone."""


class ExperimentLockedError(SpeechSSLError):
    """Another live process holds the experiment dir."""
