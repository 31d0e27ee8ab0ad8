"""keep: N, after a good run: the job's older savesets on their host removed, by the helper's
prune job (remote_helper/jobs/prune.py), which lists and removes them where they are."""
from __future__ import annotations

from remote_helper.wire import protocol
from remote_helper.wire.protocol import OPEN, RESULT

from ...inventory.model import Inventory, Stamp
from ...spec import Endpoint
from ...transport.helper import ConnectOptions, open_session
from ...transport.ssh.config import SshOptions
from .commandline import Planned


def kept_saveset(planned: Planned) -> tuple[Endpoint, Endpoint]:
    """The saveset `keep` counts (a backup's target, else the first saveset): as this run
    wrote it, and as the job's template names it."""
    job = planned.job
    if job.type == "backup":
        return planned.target, job.target
    return planned.savesets[0], job.savesets[0]


def prune(planned: Planned, inventory: Inventory, stamp: Stamp, ssh_config: str) -> list[str]:
    """Remove the job's savesets beyond `keep` on their host; the paths removed."""
    assert planned.job.keep is not None
    written, template = kept_saveset(planned)
    host = inventory.hosts.get(written.host or "")
    options = ConnectOptions(ssh=SshOptions(config_file=ssh_config),
                             sudo=bool(host and host.sudo), remote_python=None,
                             interactive=False)
    session = open_session(written, options)
    try:
        result = session.request(OPEN, {"protocol": protocol.PROTOCOL_VERSION, "job": "prune",
                                        "pattern": stamp.pattern(template.path, planned.name),
                                        "keep": planned.job.keep, "current": written.path},
                                 RESULT, written.path)
    finally:
        session.close()
    return [str(path) for path in result.get("removed", [])]
