"""The project's error: what a user can cause and fix."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class UsageError(ValueError):
    """A bad flag, file, folder or data set, found before any long work starts.

    The message names the problem and the fix. Library code (``vit_yoga``, ``yoga82``) raises it; the scripts
    (``train.py``, ``python -m yoga82``, ``convert_vit_checkpoint.py``) print it as one ``error: ...`` line and exit
    with status 2.
    """


def command_line(main: Callable[[], Any]) -> int:
    """A script's exit status: 0 when ``main`` ran, 2 after one ``error: ...`` line on stderr for a UsageError (a
    mistake the user can fix, found before any work)."""
    try:
        main()
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
