"""Errors raised on the target host.

Each carries the name of the client-side class it becomes (`kind`), so that the helper's ERROR
frame can be rebuilt into the same bacpac error on the client (borg does the same with its
RPC errors). The helper knows nothing of the client's classes beyond these names.
"""
import errno as _errno

# Whatever failed, a full disk is told as such: running again would only fill it again.
DISK_FULL = (_errno.ENOSPC, _errno.EDQUOT)


class HelperError(Exception):
    """A failure on the target; `kind` names the client error class it becomes."""

    kind = "TransferError"

    def __init__(self, message, errno=0):
        # type: (str, int) -> None
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


class IntegrityError(HelperError):
    """Data arrived intact on the wire but does not match what was promised (sha256, sizes)."""

    kind = "VerifyError"
