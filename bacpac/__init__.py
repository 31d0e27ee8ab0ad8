"""bacpac: duplicate disks and copy trees between Linux hosts over SSH."""

from . import lazy

__version__ = "0.1.0"

# Before any module of ours imports paramiko, which imports invoke for `Match exec` alone.
lazy.defer("invoke")
