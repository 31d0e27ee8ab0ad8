"""The frames a reader plans for a stretch of the image, for the sender to put on the wire.

dedup.py and delta.py plan them on the compressor pool; pipeline.py sends each by its type.
Offsets and sizes are in the image, in bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Data:
    """Bytes the target does not have: `payload` is them compressed (a DATA frame)."""

    offset: int
    size: int
    payload: bytes


@dataclass(frozen=True)
class Hole:
    """Zeros: the target makes a hole or writes zeros (a HOLE frame)."""

    offset: int
    size: int


@dataclass(frozen=True)
class Match:
    """Bytes the target already holds at the same place, as its digests showed (delta runs)."""

    offset: int
    size: int


@dataclass(frozen=True)
class Copy:
    """Bytes the image already sent at `source`: the target reads them back from there and
    checks them against `digest` (their sha256) before it writes them (a COPY frame)."""

    offset: int
    size: int
    source: int
    digest: bytes


Frame = Union[Data, Hole, Match, Copy]
