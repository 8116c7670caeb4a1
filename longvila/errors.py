"""Errors that name the offending input and the reason, for per-partition failure reports."""

from __future__ import annotations


class InputError(Exception):
    """A bad input (video, model reply, dataset): fails its own partition, never the whole run."""

    def __init__(self, source: str, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


class VideoError(InputError):
    """A video that cannot be processed: corrupt, truncated, empty, not a video, no decodable frames."""
