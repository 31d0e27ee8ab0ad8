"""bacpac's errors: one class per cause, each with its exit code.

Only `cli.main()` turns an error into an exit code. Every message is one line a user can act
on, and names the host, the path and the cause.
"""
from __future__ import annotations

import signal
from typing import Optional

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class BacpacError(Exception):
    """A failure of the work itself (connection, I/O, verification)."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(BacpacError):
    """The command line, an option or the inventory is wrong."""

    exit_code = EXIT_USAGE


class RefusedError(BacpacError):
    """A safety check refused the job before anything was written."""

    exit_code = EXIT_USAGE


class ConnectError(BacpacError):
    """The host could not be reached or the SSH session could not be set up."""


class AuthError(ConnectError):
    """The server refused every credential we had."""


class HostKeyError(ConnectError):
    """The server's host key is unknown or has changed."""


class TransferError(BacpacError):
    """The transfer failed after it started: channel cut, I/O error on either side."""


class DiskFullError(TransferError):
    """A disk on the target host filled up: running again as it is would fill it again."""


class ProtocolError(TransferError):
    """The peer sent bytes that do not follow the wire format."""


class VerifyError(BacpacError):
    """What arrived does not match what was sent (sha256, sizes, saveset checksums)."""


class OutputError(BacpacError):
    """bacpac's own output could not be written: its reader went away (`bacpac ... | head`)."""


class Interrupted(BacpacError):
    """A signal ended the run: SIGINT (Ctrl-C), SIGTERM or SIGHUP. The exit code is 128 plus
    the signal's number (130, 143, 129), as a shell reports a process the signal killed."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread as Python raises KeyboardInterrupt for
    SIGINT: every path that handles Ctrl-C handles them alike."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def interruption(interrupt: KeyboardInterrupt, where: Optional[str] = None,
                 hint: str = "") -> Interrupted:
    """The Interrupted error for a KeyboardInterrupt or a Signalled, naming its signal."""
    signum = getattr(interrupt, "signum", signal.SIGINT)
    lead = f"{where}: " if where else ""
    return Interrupted(f"{lead}interrupted by {signal.Signals(signum).name}{hint}", signum)


def internal_error(error: BaseException) -> str:
    """The one line a bug gets: its traceback only on request."""
    return (f"internal error: {type(error).__name__}: {error} "
            "(set BACPAC_DEBUG=1 for the traceback)")


_REMOTE_KINDS = {
    cls.__name__: cls
    for cls in (BacpacError, UsageError, RefusedError, TransferError, DiskFullError,
                ProtocolError, VerifyError)
}


def from_remote(kind: str, message: str, host: str, path: str) -> BacpacError:
    """Rebuild an error the helper sent in an ERROR frame, naming the host and the path.

    The helper's messages begin with the path they are about, when there is one: `path`
    (the job's), another absolute path (a saveset's), or none, and then `path` is named.
    """
    cls = _REMOTE_KINDS.get(kind, TransferError)
    if not message.startswith((path, "/")):
        message = f"{path}: {message}"
    if cls is DiskFullError:
        message += ": the disk is full"
    return cls(message if host == "localhost" else f"{host}:{message}")
