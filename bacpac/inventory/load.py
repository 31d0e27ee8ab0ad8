"""Reading an inventory: YAML → validated frozen dataclasses, or one InventoryError that names
the file, the line and the key.

# Strategy: the file is composed, not loaded: PyYAML's node tree keeps the mark (line) of every
# key and value, which a plain dict would lose. _Map walks one mapping node, checks its keys
# against what the schema allows, and converts values one at a time, so every error can point
# at the line it is about. Everything is checked before anything runs: keys, types, hosts,
# names, targets, placeholders, and the environment variables the passwords come from.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterator, Optional, TypeVar

import yaml  # type: ignore[import-untyped]
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode  # type: ignore[import-untyped]

from ..errors import UsageError
from ..spec import Endpoint, parse_endpoint
from .model import JOB_TYPES, PLACEHOLDERS, Host, Hooks, Inventory, Job, placeholders

HOST_KEYS = ("hostname", "port", "user", "identity_file", "known_hosts", "password_env", "sudo",
             "ssh_config")
TOP_KEYS = ("defaults", "hosts", "hosts_from", "jobs", "hooks", "hook_timeout")
HOOK_KEYS = ("before", "after", "on_error")
COMMON_JOB_KEYS = ("name", "type", "source", "target") + HOOK_KEYS
JOB_KEYS = {
    "dup": COMMON_JOB_KEYS + ("saveset", "force", "delta", "verify", "keep", "bwlimit"),
    "backup": COMMON_JOB_KEYS + ("saveset", "keep", "bwlimit"),
    "copy": COMMON_JOB_KEYS + ("saveset", "delete", "bwlimit"),
}
# every key of some job type, each once: what a job may hold before its type is known
ANY_JOB_KEYS = tuple(dict.fromkeys(key for keys in JOB_KEYS.values() for key in keys))
T = TypeVar("T")


class InventoryError(UsageError):
    """The inventory is wrong: exit 2, and nothing runs."""


def load(path: str, environ: Optional[dict[str, str]] = None) -> Inventory:
    """The inventory at `path`, validated; InventoryError naming file, line and key if not."""
    environ = dict(os.environ) if environ is None else environ
    root = _compose(path)
    top = _Map(root, path, "inventory")
    top.check(TOP_KEYS, required=("jobs",))
    defaults = top.map("defaults")
    if defaults is not None:
        defaults.check(HOST_KEYS)
    hosts: dict[str, Host] = {}
    if top.has("hosts_from"):
        hosts.update(_ansible_hosts(top, defaults))
    hosts_map = top.map("hosts")
    for name, node in (hosts_map.items() if hosts_map else []):
        hosts[name] = _host(name, _Map(node, path, f"host {name!r}", allow_null=True), defaults)
    for host in hosts.values():
        if host.password_env is not None and host.password_env not in environ:
            raise InventoryError(f"{path}: host {host.name!r}: password_env: "
                                 f"${host.password_env} is not set")
    jobs = tuple(_jobs(top, hosts))
    timeout = top.number("hook_timeout", 600.0)
    return Inventory(path=path, hosts=hosts, jobs=jobs, hooks=_hooks(top.map("hooks")),
                     hook_timeout=timeout)


def _compose(path: str) -> Node:
    try:
        with open(path, encoding="utf-8") as f:
            node = yaml.compose(f, Loader=yaml.SafeLoader)
    except OSError as e:
        raise InventoryError(f"{path}: {e.strerror}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise InventoryError(f"{path}{line}: not valid YAML: {e.problem or e.context}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InventoryError(f"{path}: not valid YAML: {e}") from None
    if node is None:
        raise InventoryError(f"{path}: empty inventory (it needs at least 'jobs:')")
    return node


class _Map:
    """One YAML mapping, with the marks of its keys and values, for checked reads."""

    def __init__(self, node: Node, file: str, what: str, allow_null: bool = False) -> None:
        self.file = file
        self.what = what
        self.line = node.start_mark.line + 1
        self.nodes: dict[str, tuple[Node, Node]] = {}
        if allow_null and isinstance(node, ScalarNode) and node.tag.endswith(":null"):
            return
        if not isinstance(node, MappingNode):
            raise self.error_at(node, None, f"{what} must be a mapping")
        for key, value in node.value:
            if not isinstance(key, ScalarNode):
                raise self.error_at(key, None, "a key must be a plain name")
            if key.value in self.nodes:
                raise self.error_at(key, key.value, f"given twice in {what}")
            self.nodes[key.value] = (key, value)

    def error_at(self, node: Node, key: Optional[str], cause: str) -> InventoryError:
        named = f" {key}:" if key else ""
        return InventoryError(f"{self.file}:{node.start_mark.line + 1}:{named} {cause}")

    def error(self, key: str, cause: str) -> InventoryError:
        return self.error_at(self.nodes[key][1], key, cause)

    def check(self, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
        for name, (key, _) in self.nodes.items():
            if name not in allowed:
                raise self.error_at(key, name, f"unknown key in {self.what} (known: "
                                    f"{', '.join(allowed)})")
        for name in required:
            if name not in self.nodes:
                raise InventoryError(f"{self.file}:{self.line}: {name}: missing in {self.what}")

    def has(self, key: str) -> bool:
        return key in self.nodes

    def items(self) -> Iterator[tuple[str, Node]]:
        for name, (_, value) in self.nodes.items():
            yield name, value

    def _scalar(self, key: str, kind: str, convert: Callable[[Any], T], default: T) -> T:
        if key not in self.nodes:
            return default
        node = self.nodes[key][1]
        value = yaml.SafeLoader("").construct_object(node) if isinstance(node, ScalarNode) \
            else None
        try:
            return convert(value)
        except (TypeError, ValueError):
            raise self.error(key, f"must be {kind}") from None

    def text(self, key: str, default: Optional[str] = None) -> Optional[str]:
        return self._scalar(key, "a string", _as_str, default)

    def flag(self, key: str, default: bool = False) -> bool:
        return self._scalar(key, "true or false", _as_bool, default)

    def integer(self, key: str, lowest: int, highest: int, default: Optional[int] = None
                ) -> Optional[int]:
        value = self._scalar(key, "a whole number", _as_int, default)
        if value is not None and not lowest <= value <= highest:
            raise self.error(key, f"must be from {lowest} to {highest}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self._scalar(key, "a number of seconds", _as_float, default)
        if value <= 0:
            raise self.error(key, "must be more than 0")
        return value

    def rate(self, key: str) -> Optional[str]:
        """A rate as --bwlimit takes it: KiB/s, or with K, M or G."""
        return self._scalar(key, "a rate as --bwlimit takes it (e.g. 500K, 10M)", _as_rate, None)

    def texts(self, key: str) -> tuple[str, ...]:
        """A string or a list of strings."""
        if key not in self.nodes:
            return ()
        node = self.nodes[key][1]
        items = node.value if isinstance(node, SequenceNode) else [node]
        if not items or not all(isinstance(i, ScalarNode) and i.tag.endswith(":str")
                                for i in items):
            raise self.error(key, "must be a string or a list of strings")
        return tuple(i.value for i in items)

    def map(self, key: str) -> Optional["_Map"]:
        if key not in self.nodes:
            return None
        return _Map(self.nodes[key][1], self.file, key, allow_null=True)

    def sequence(self, key: str) -> list[Node]:
        node = self.nodes[key][1]
        if not isinstance(node, SequenceNode):
            raise self.error(key, "must be a list")
        return list(node.value)


def _as_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(value)
    return value


def _as_rate(value: Any) -> str:
    text = str(value)
    if isinstance(value, bool) or not re.fullmatch(r"\d+(\.\d+)?[KMG]?", text):
        raise ValueError(value)
    return text


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(value)
    return value


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(value)
    return value


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(value)
    return float(value)


def _host(name: str, entry: _Map, defaults: Optional[_Map],
          given: Optional[dict[str, Any]] = None) -> Host:
    """A host from its entry, then `given` (from Ansible), then the defaults."""
    entry.check(HOST_KEYS)
    values: dict[str, Any] = {}
    for source in (entry, defaults):
        if source is None:
            continue
        for key in ("hostname", "user", "identity_file", "known_hosts", "password_env",
                    "ssh_config"):
            values.setdefault(key, source.text(key))
            if values[key] is None:
                del values[key]
        if source.has("port"):
            values.setdefault("port", source.integer("port", 1, 65535))
        if source.has("sudo"):
            values.setdefault("sudo", source.flag("sudo"))
        if source is entry and given:
            for key, value in given.items():
                values.setdefault(key, value)
    for key in ("identity_file", "known_hosts", "ssh_config"):
        if key in values:
            values[key] = os.path.expanduser(values[key])
    return Host(name=name, **values)


def _hooks(entry: Optional[_Map]) -> Hooks:
    if entry is None:
        return Hooks()
    entry.check(HOOK_KEYS)
    return Hooks(*(entry.texts(key) for key in HOOK_KEYS))


def _jobs(top: _Map, hosts: dict[str, Host]) -> Iterator[Job]:
    names: dict[str, int] = {}
    written: dict[tuple[Optional[str], str], str] = {}
    for node in top.sequence("jobs"):
        entry = _Map(node, top.file, "a job")
        entry.check(ANY_JOB_KEYS, required=("name", "source", "target"))
        job = _job(entry, hosts)
        if job.name in names:
            raise entry.error("name", f"{job.name!r} is the name of the job on line "
                              f"{names[job.name]} too")
        names[job.name] = entry.line
        for key, endpoint in [("target", job.target)] + [("saveset", s) for s in job.savesets]:
            place = (endpoint.host, os.path.normpath(endpoint.path))
            if place in written:
                raise entry.error(key, f"{endpoint} is written by job {written[place]!r} too")
            written[place] = job.name
        yield job


def _job(entry: _Map, hosts: dict[str, Host]) -> Job:
    name = entry.text("name")
    assert name is not None  # required
    kind = entry.text("type", "dup")
    if kind not in JOB_TYPES:
        raise entry.error("type", f"{kind!r} is not one of {', '.join(JOB_TYPES)}")
    assert kind is not None
    entry.check(JOB_KEYS[kind])
    sources = entry.texts("source")
    if kind != "copy" and len(sources) != 1:
        raise entry.error("source", f"a {kind} job reads one source")
    for source in sources:
        _source_host(entry, kind, source, hosts)
    target = _endpoint(entry, "target", hosts, None)
    savesets = tuple(_endpoint(entry, "saveset", hosts, target, text)
                     for text in entry.texts("saveset"))
    keep = entry.integer("keep", 1, 10000)
    kept = target if kind == "backup" else (savesets[0] if savesets else None)
    if keep is not None and (kept is None or not {"date", "time"} & set(placeholders(kept.path))):
        raise entry.error("keep", "needs a saveset named with {date} or {time}, so that each "
                          "run writes a new one")
    bwlimit = entry.rate("bwlimit")
    return Job(name=name, type=kind, sources=sources, target=target, savesets=savesets,
               bwlimit=bwlimit, force=entry.flag("force"), delta=entry.flag("delta"),
               verify=entry.flag("verify"), delete=entry.flag("delete"), keep=keep,
               hooks=Hooks(*(entry.texts(k) for k in HOOK_KEYS)), line=entry.line)


def _source_host(entry: _Map, kind: str, source: str, hosts: dict[str, Host]) -> None:
    """A dup or backup reads a local disk; a copy's remote source is on a known host."""
    try:
        host = parse_endpoint(source).host
    except UsageError as e:
        raise entry.error("source", str(e)) from None
    if host is not None and kind != "copy":
        raise entry.error("source", f"a {kind} job reads a local disk or image")
    if host is not None and host not in hosts:
        raise entry.error("source", f"unknown host {host!r} (not under hosts: or in "
                          "hosts_from:)")


def _endpoint(entry: _Map, key: str, hosts: dict[str, Host], beside: Optional[Endpoint],
              text: Optional[str] = None) -> Endpoint:
    """`text` (else the key's string) as host:path, its host in the inventory, its placeholders
    known; a saveset with no host lives on the target's (`beside`)."""
    text = entry.text(key) if text is None else text
    assert text is not None
    try:
        endpoint = parse_endpoint(text)
        names = placeholders(endpoint.path)
    except (UsageError, ValueError) as e:
        raise entry.error(key, str(e)) from None
    unknown = [n for n in names if n not in PLACEHOLDERS]
    if unknown:
        raise entry.error(key, f"unknown placeholder {{{unknown[0]}}} (known: "
                          + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS) + ")")
    if endpoint.user is not None:
        raise entry.error(key, "no user@ here: give the host's user under hosts:")
    if endpoint.host is None and beside is not None:
        return Endpoint(endpoint.path, beside.host)
    if endpoint.host is not None and endpoint.host not in hosts:
        raise entry.error(key, f"unknown host {endpoint.host!r} (not under hosts: or in "
                          "hosts_from:)")
    return endpoint


def _ansible_hosts(top: _Map, defaults: Optional[_Map]) -> dict[str, Host]:
    """The hosts of an Ansible YAML inventory: every group's hosts, children followed."""
    # relative to the inventory's own directory, as an Include is to its file's
    path = os.path.join(os.path.dirname(top.file),
                        os.path.expanduser(top.text("hosts_from") or ""))
    found: dict[str, dict[str, Any]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise top.error("hosts_from", f"{path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise top.error("hosts_from", f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise top.error("hosts_from", f"{path}: not an Ansible YAML inventory")
    for group in data.values():
        _ansible_group(group, {}, found, path, top)
    empty = _Map(yaml.compose("{}"), top.file, "host")
    return {name: _host(name, empty, defaults, given) for name, given in found.items()}


ANSIBLE_KEYS = {"ansible_host": ("hostname", str), "ansible_port": ("port", int),
                "ansible_user": ("user", str),
                "ansible_ssh_private_key_file": ("identity_file", str)}


def _ansible_group(group: Any, inherited: dict, found: dict, path: str, top: _Map) -> None:
    if group is None:
        return
    if not isinstance(group, dict):
        raise top.error("hosts_from", f"{path}: a group is not a mapping")
    variables = {**inherited, **(group.get("vars") or {})}
    for name, host_vars in (group.get("hosts") or {}).items():
        merged = {**variables, **(host_vars or {})}
        settings = found.setdefault(str(name), {})
        for key, (ours, kind) in ANSIBLE_KEYS.items():
            if key in merged and ours not in settings:
                try:
                    settings[ours] = kind(merged[key])
                except (TypeError, ValueError):
                    raise top.error("hosts_from", f"{path}: host {name}: {key} "
                                    f"{merged[key]!r} is not valid") from None
    for child in (group.get("children") or {}).values():
        _ansible_group(child, variables, found, path, top)
