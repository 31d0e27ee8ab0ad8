"""bacpac: duplicate disks and copy trees between Linux hosts over SSH.

Layers, each importing only those after it: cli -> commands -> engine | transport | ui ->
errors, spec, lazy (and remote_helper's wire, target and saveset, shared with the helper).
"""

__version__ = "0.1.0"
