"""The prune job: after a good run, remove a job's older savesets beyond the number to keep.

Only regular files matching the job's own pattern (its saveset's name with {date} and {time} as
`*`) in that one directory are considered; hidden names (a saveset being written has one) are
never matched, and the saveset the run just wrote is always kept. Newest first by mtime.
"""
import glob
import os
import stat
from typing import TYPE_CHECKING  # for the type comments

from ..errors import HelperError, ProtocolError
from ..wire.protocol import RESULT

if TYPE_CHECKING:  # server.py imports this module
    from .server import Input, Output  # noqa: F401


def run_prune(job, inp, out):
    # type: (dict, Input, Output) -> None
    pattern = os.path.expanduser(str(job.get("pattern") or ""))
    keep = job.get("keep")
    if not pattern:
        raise ProtocolError("prune: no pattern")
    if not isinstance(keep, int) or keep < 1:
        raise ProtocolError("prune: keep must be a whole number from 1")
    if os.sep in os.path.basename(pattern) or "*" in os.path.dirname(pattern):
        raise ProtocolError("prune: a pattern matches names in one directory only")
    current = os.path.abspath(os.path.expanduser(str(job.get("current") or "")))
    found = []
    for path in glob.glob(pattern):
        try:
            st = os.lstat(path)
        except OSError:
            continue  # gone meanwhile
        if stat.S_ISREG(st.st_mode):
            found.append((st.st_mtime, path))
    found.sort(reverse=True)
    removed = []
    kept = 0
    for _, path in found:
        if os.path.abspath(path) == current or kept < keep:
            kept += 1
            continue
        try:
            os.unlink(path)
        except OSError as e:
            raise HelperError("%s: %s" % (path, e.strerror), e.errno)
        removed.append(path)
    out.send_json(RESULT, {"removed": removed, "kept": kept})
