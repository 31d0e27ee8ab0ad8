"""Errors raised on the target host.

Each carries the name of the client-side class it becomes (`kind`), so that the helper's ERROR
frame can be rebuilt into the same bacpac error on the client (borg does the same with its
RPC errors). The helper knows nothing of the client's classes beyond these names.
"""
import errno as _errno
import os
from typing import Optional  # for the type comments

# Whatever failed, a full disk is told as such: running again would only fill it again.
DISK_FULL = (_errno.ENOSPC, _errno.EDQUOT)


class ClientGone(Exception):
    """stdin ended (or the client sent ERROR) before the job was complete."""


class HelperError(Exception):
    """A failure on the target; `kind` names the client error class it becomes."""

    kind = "TransferError"

    def __init__(self, message, errno=0):
        # type: (str, Optional[int]) -> None
        Exception.__init__(self, message)
        self.message = message
        self.errno = errno

    def to_dict(self):
        # type: () -> dict
        kind = "DiskFullError" if self.errno in DISK_FULL else self.kind
        return {"kind": kind, "errno": self.errno, "message": self.message}


class Refused(HelperError):
    """A safety check refused the job before anything was written."""

    kind = "RefusedError"


class ProtocolError(HelperError):
    """The byte stream does not follow the wire format (corrupt, truncated, hostile)."""

    kind = "ProtocolError"


class LocalProtocolError(ProtocolError):
    """This side misused the codec (a payload over the cap, bytes fed after end of input): a
    bug here, not a fault of the peer (after h11)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the wire format: each end names its peer when it says so
    (after h11)."""


class IntegrityError(HelperError):
    """Data arrived intact on the wire but does not match what was promised (sha256, sizes)."""

    kind = "VerifyError"


def as_helper_error(error, context=None):
    # type: (BaseException, Optional[str]) -> HelperError
    """error as a HelperError, for an ERROR frame. A HelperError says where it happened
    already; any other is led by `context` (the path, what was being done), so that even an
    unexpected error, in any thread, reaches the client as one line it can place. A misuse
    of the codec is a bug, and is told as one."""
    if isinstance(error, HelperError) and not isinstance(error, LocalProtocolError):
        return error
    lead = "%s: " % context if context else ""
    if isinstance(error, OSError):
        return HelperError(lead + (error.strerror or str(error)), error.errno or 0)
    import traceback  # for a bug alone: its import (tokenize, linecache) would slow every start
    frames = traceback.extract_tb(error.__traceback__)
    place = " (%s:%d)" % (os.path.basename(frames[-1][0]), frames[-1][1]) if frames else ""
    return HelperError("%shelper failed: %s: %s%s" % (lead, type(error).__name__, error, place))
