"""The project's error: what a user can cause and fix."""

from __future__ import annotations


class UsageError(ValueError):
    """A bad flag, file, folder or data set, found before any long work starts.

    The message names the problem and the fix. Library code (``vit_yoga``, ``yoga82``) raises it; the scripts
    (``train.py``, ``python -m yoga82``, ``convert_vit_checkpoint.py``) print it as one ``error: ...`` line and exit
    with status 2.
    """
