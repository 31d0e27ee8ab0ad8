"""Deferred imports: a module that costs start-up time is loaded only when first used.

Paramiko imports invoke at start-up, for `Match exec` in its ssh_config reader alone, which
bacpac does not use; invoke brings in asyncio, unittest.mock and a YAML parser, a large part
of the client's start. defer("invoke"), called in transport/ssh/connection.py just before its
import of paramiko, puts a stand-in module in its place, which imports the real one on the
first attribute asked of it: a program that imports bacpac's SSH layer and uses invoke (or Paramiko's SSHConfig)
still gets the real one, and bacpac never pays.
(importlib's LazyLoader does not do here: on Python 3.11 the import statement itself reads
the module's __spec__, which loads it.)

Paramiko 4 and later ask importlib.metadata for their own version as they are imported: that
module (and the email parser under it) cost about 13 ms of every start, a tenth of the
client's imports. quick_version() stands in for it around that import, reading the version
from the distribution's METADATA file on sys.path as importlib.metadata would; anything it
is not sure of goes to the real module.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import sys
import types
from typing import Any, Iterator, Optional


class _Deferred(types.ModuleType):
    """Stands in for a module until an attribute is first asked of it."""

    def __getattr__(self, attr: str) -> Any:  # only called for what the stand-in lacks
        real = self.__dict__.get("_real")
        if real is None:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = self._real = importlib.import_module(self.__name__)
        return getattr(real, attr)


def defer(name: str) -> None:
    """Make `import name` return a stand-in that imports the module on first use."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return  # absent: the importer's own ImportError handling applies
    module = _Deferred(name)
    module.__spec__ = spec
    sys.modules[name] = module


class _Metadata(_Deferred):
    """importlib.metadata's stand-in: version() answered from the METADATA file itself."""

    def version(self, name: str) -> str:
        found = _dist_version(name)
        return found if found is not None else self.__getattr__("version")(name)


def _dist_version(name: str) -> Optional[str]:
    """The Version of the first distribution named `name` on sys.path, as importlib.metadata
    finds it, or None where that search could differ (a zip on the path, an egg-info, two
    candidates in one directory, no Version header)."""
    wanted = re.sub(r"[-_.]+", "_", name).lower()
    for entry in sys.path:
        folder = entry or "."
        if not os.path.isdir(folder):
            if os.path.exists(folder):
                return None  # a zip file: importlib.metadata reads those too
            continue
        found = [f for f in os.listdir(folder) if f.endswith((".dist-info", ".egg-info"))
                 and re.sub(r"[-_.]+", "_", f.partition("-")[0]).lower() == wanted]
        if found:
            if len(found) > 1 or not found[0].endswith(".dist-info"):
                return None
            return _version_header(os.path.join(folder, found[0], "METADATA"))
    return None


def _version_header(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    return None  # the headers ended with no Version
                if line.startswith("Version:"):
                    return line.partition(":")[2].strip() or None
    except (OSError, UnicodeDecodeError):
        pass
    return None


@contextlib.contextmanager
def quick_version() -> Iterator[None]:
    """Within the block, `importlib.metadata` is a stand-in whose version() reads METADATA
    (any other attribute loads the real module); after it, an import gets the real one."""
    name = "importlib.metadata"
    if name in sys.modules:
        yield
        return
    stand_in = _Metadata(name)
    stand_in.__spec__ = importlib.util.find_spec(name)
    sys.modules[name] = stand_in
    try:
        yield
    finally:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
