"""bacpac: duplicate disks and copy trees between Linux hosts over SSH."""

__version__ = "0.1.0"
