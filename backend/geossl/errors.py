"""User-facing errors: one exception type whose message names the problem and the fix.

Every front end (CLI, service, plugin) shows ``str(error)`` as is, so messages are written for a
GIS user, not a programmer. Anything that is *not* a ``GeoSSLError`` is a bug.
"""

from __future__ import annotations


class GeoSSLError(Exception):
    """A problem with the user's input or environment that the user can fix."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem} Fix: {fix}")
