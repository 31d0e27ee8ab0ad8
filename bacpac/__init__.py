"""bacpac: duplicate disks and copy trees between Linux hosts over SSH.

Layers, each importing only those after it: cli -> commands -> engine | transport | ui ->
errors, spec, lazy (and remote_helper's wire, target and saveset, shared with the helper).
"""

from . import lazy

__version__ = "0.1.0"

# Before any module of ours imports paramiko, which imports invoke for `Match exec` alone.
lazy.defer("invoke")
