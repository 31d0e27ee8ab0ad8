"""Deferred imports: a module that costs start-up time is loaded only when first used.

Paramiko imports invoke at start-up, for `Match exec` in its ssh_config reader alone, which
bacpac does not use; invoke brings in asyncio, unittest.mock and a YAML parser, a large part
of the client's start. defer("invoke"), called in transport/ssh/connection.py just before its
import of paramiko, puts a stand-in module in its place, which imports the real one on the
first attribute asked of it: a program that imports bacpac's SSH layer and uses invoke (or Paramiko's SSHConfig)
still gets the real one, and bacpac never pays.
(importlib's LazyLoader does not do here: on Python 3.11 the import statement itself reads
the module's __spec__, which loads it.)
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


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
