"""SSH options as OpenSSH applies them: command line first, then ssh_config, first value wins.

# Strategy: paramiko.SSHConfig only parses, so the command line (-l, -p, -i, -o) is written as
# a block of global lines *ahead of* the config file's text and the whole is parsed as one
# file. Paramiko's lookup keeps the first value of every key and accumulates IdentityFile in
# order, which is exactly OpenSSH's rule, and it expands %h/%r/%u/%d/~ in the keys it knows.
# The result is validated once into a frozen HostConfig; nothing below this reads ssh_config.
"""
from __future__ import annotations

import getpass
import os
import pwd
import re
from dataclasses import dataclass
from typing import Optional

import paramiko

from .errors import UsageError


@dataclass(frozen=True)
class SshOptions:
    """The OpenSSH-style options given on the command line."""

    config_file: Optional[str] = None          # -F FILE; default ~/.ssh/config when it exists
    port: Optional[int] = None                 # -p
    identity_files: tuple[str, ...] = ()       # -i (repeatable)
    login_name: Optional[str] = None           # -l
    options: tuple[tuple[str, str], ...] = ()  # -o Key=Value, in the order given


@dataclass(frozen=True)
class HostConfig:
    """Everything needed to reach one host, resolved and validated."""

    alias: str                        # the name the user typed
    hostname: str                     # the name or address actually connected
    port: int
    user: str
    identity_files: tuple[str, ...]   # explicit ones, else the default keys that exist
    identities_only: bool
    known_hosts_files: tuple[str, ...]
    global_known_hosts_files: tuple[str, ...]
    strict: str                       # "yes" | "accept-new" | "no"
    host_key_alias: Optional[str]
    hash_known_hosts: bool
    connect_timeout: Optional[float]
    alive_interval: int
    alive_count_max: int
    proxy_jump: Optional[str]
    proxy_command: Optional[str]
    password_auth: bool
    batch_mode: bool
    config_file: Optional[str]

    @property
    def known_hosts_name(self) -> str:
        """The name the host key is filed under, as OpenSSH writes it."""
        if self.host_key_alias:
            return self.host_key_alias
        if self.port == 22:
            return self.hostname
        return f"[{self.hostname}]:{self.port}"


# Every keyword of ssh_config(5) in OpenSSH 9.x: an unknown one is a typo (ssh refuses it too),
# a known one that does not matter to a batch copy is accepted and ignored.
_KEYWORDS = {k.lower() for k in """
AddKeysToAgent AddressFamily BatchMode BindAddress BindInterface CanonicalDomains
CanonicalizeFallbackLocal CanonicalizeHostname CanonicalizeMaxDots CanonicalizePermittedCNAMEs
CASignatureAlgorithms CertificateFile ChallengeResponseAuthentication ChannelTimeout CheckHostIP
Ciphers ClearAllForwardings Compression ConnectionAttempts ConnectTimeout ControlMaster
ControlPath ControlPersist DynamicForward EnableEscapeCommandline EnableSSHKeysign EscapeChar
ExitOnForwardFailure FingerprintHash ForkAfterAuthentication ForwardAgent ForwardX11
ForwardX11Timeout ForwardX11Trusted GatewayPorts GlobalKnownHostsFile GSSAPIAuthentication
GSSAPIDelegateCredentials HashKnownHosts HostbasedAcceptedAlgorithms HostbasedAuthentication
HostbasedKeyTypes HostKeyAlgorithms HostKeyAlias HostName IdentitiesOnly IdentityAgent
IdentityFile IgnoreUnknown IPQoS KbdInteractiveAuthentication KbdInteractiveDevices
KexAlgorithms KnownHostsCommand LocalCommand LocalForward LogLevel LogVerbose MACs
NoHostAuthenticationForLocalhost NumberOfPasswordPrompts ObscureKeystrokeTiming
PasswordAuthentication PermitLocalCommand PermitRemoteOpen PKCS11Provider Port
PreferredAuthentications ProxyCommand ProxyJump ProxyUseFdpass PubkeyAcceptedAlgorithms
PubkeyAcceptedKeyTypes PubkeyAuthentication RekeyLimit RemoteCommand RemoteForward RequestTTY
RequiredRSASize RevokedHostKeys SecurityKeyProvider SendEnv ServerAliveCountMax
ServerAliveInterval SessionType SetEnv StdinNull StreamLocalBindMask StreamLocalBindUnlink
StrictHostKeyChecking SyslogFacility TCPKeepAlive Tag Tunnel TunnelDevice UpdateHostKeys
User UserKnownHostsFile VerifyHostKeyDNS VisualHostKey XAuthLocation
""".split()}

_BOOLEANS = {"yes": True, "true": True, "no": False, "false": False}
_STRICT = {"yes": "yes", "true": "yes", "ask": "yes", "accept-new": "accept-new",
           "no": "no", "off": "no", "false": "no"}
_NUMBERS = {"port": (1, 65535), "connecttimeout": (0, 10**6),
            "serveraliveinterval": (0, 10**6), "serveralivecountmax": (0, 10**6)}
_BOOLEAN_KEYS = {"identitiesonly", "passwordauthentication", "batchmode", "hashknownhosts"}
_O_OPTION = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*)(?:\s*=\s*|\s+)(\S.*?)\s*$")


def parse_o_option(text: str) -> tuple[str, str]:
    """Split one -o argument, "Key=Value" or "Key Value"; a malformed one is a UsageError."""
    match = _O_OPTION.match(text)
    if not match or "\n" in text:
        raise UsageError(f"-o {text!r}: expected Key=Value")
    key, value = match.group(1), match.group(2)
    if key.lower() not in _KEYWORDS or key.lower() in ("host", "match", "include"):
        raise UsageError(f"-o {text!r}: unknown ssh option {key}")
    problem = _check_value(key.lower(), value)
    if problem:
        raise UsageError(f"-o {text!r}: {problem}")
    return key, value


def _check_value(key: str, value: str) -> Optional[str]:
    """Why a value is wrong for one of the keys bacpac uses, or None."""
    if key in _NUMBERS:
        low, high = _NUMBERS[key]
        if not value.isdigit() or not low <= int(value) <= high:
            return f"{key} must be a number from {low} to {high}"
    elif key in _BOOLEAN_KEYS and value.lower() not in _BOOLEANS:
        return f"{key} must be yes or no"
    elif key == "stricthostkeychecking" and value.lower() not in _STRICT:
        return "StrictHostKeyChecking must be yes, accept-new, no or ask"
    return None


def resolve_host(host: str, user: Optional[str], opts: SshOptions) -> HostConfig:
    """Apply the command line and ssh_config to `host` (an alias or a name) as ssh would."""
    config_file, text = _read_config(opts.config_file)
    try:
        config = _Config.from_text(_command_line_block(user, opts) + text)
        found = config.lookup(host)
    except (paramiko.SSHException, ValueError, KeyError, OSError) as e:
        raise UsageError(f"{config_file or 'ssh options'}: {e}")
    for key in (*_NUMBERS, *_BOOLEAN_KEYS, "stricthostkeychecking"):
        problem = _check_value(key, found[key]) if key in found else None
        if problem:
            raise UsageError(f"{config_file or 'ssh options'}: {host}: {problem}")
    return _host_config(host, found, config_file)


class _Config(paramiko.SSHConfig):
    """paramiko.SSHConfig that expands only the tokens a value holds.

    Paramiko computes every token a key allows, whether the value uses it or not, and one of
    them, %l, is the local host's FQDN: a reverse DNS lookup on every connection, which takes
    seconds where the local name does not resolve (paramiko issues #338 and #1900).
    """

    _value = ""

    def _tokenize(self, config: dict, target_hostname: str, key: str, value: str) -> str:
        self._value = value
        return super()._tokenize(config, target_hostname, key, value)

    def _allowed_tokens(self, key: str) -> list:
        return [token for token in super()._allowed_tokens(key) if token in self._value]


def _read_config(path: Optional[str]) -> tuple[Optional[str], str]:
    """The -F file alone, or as ssh does without -F: ~/.ssh/config, then /etc/ssh/ssh_config."""
    if path is not None:
        return path, _read_text(path)
    user_file = os.path.expanduser("~/.ssh/config")
    found = [p for p in (user_file, "/etc/ssh/ssh_config") if os.path.isfile(p)]
    # "Host *" so the system file's leading global lines do not join the user file's last block.
    text = "\nHost *\n".join(_read_text(p) for p in found)
    return (found[0] if found else None), text


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read ssh config: {getattr(e, 'strerror', None) or e}")


def _command_line_block(user: Optional[str], opts: SshOptions) -> str:
    """The command line as global config lines; they come first, so they win."""
    lines = []
    if user:
        lines.append(f"User {user}")
    if opts.login_name:
        lines.append(f"User {opts.login_name}")
    if opts.port is not None:
        lines.append(f"Port {opts.port}")
    lines += [f"IdentityFile {path}" for path in opts.identity_files]
    lines += [f"{key} {value}" for key, value in opts.options]
    return "".join(line + "\n" for line in lines)


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return pwd.getpwuid(os.getuid()).pw_name


def _host_config(alias: str, found: dict, config_file: Optional[str]) -> HostConfig:
    hostname = found["hostname"].lower()
    port = int(found.get("port", 22))
    user = found.get("user") or _local_user()
    tokens = {"%d": os.path.expanduser("~"), "%u": _local_user(), "%h": hostname,
              "%r": user, "%p": str(port), "%n": alias, "%%": "%"}

    def flag(key: str, default: bool) -> bool:
        return _BOOLEANS[found[key].lower()] if key in found else default

    def files(key: str, default: str) -> tuple[str, ...]:
        return tuple(_expand(p, tokens) for p in found.get(key, default).split())

    jump = found.get("proxyjump")
    command = found.get("proxycommand")
    timeout = int(found.get("connecttimeout", 0))
    return HostConfig(
        alias=alias, hostname=hostname, port=port, user=user,
        identity_files=_identity_files(found.get("identityfile", [])),
        identities_only=flag("identitiesonly", False),
        known_hosts_files=files("userknownhostsfile", "~/.ssh/known_hosts ~/.ssh/known_hosts2"),
        global_known_hosts_files=files(
            "globalknownhostsfile", "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2"),
        strict=_STRICT[found.get("stricthostkeychecking", "yes").lower()],
        host_key_alias=found.get("hostkeyalias"),
        hash_known_hosts=flag("hashknownhosts", False),
        connect_timeout=float(timeout) if timeout else None,  # 0 means the system's
        alive_interval=int(found.get("serveraliveinterval", 0)),
        alive_count_max=int(found.get("serveralivecountmax", 3)),
        proxy_jump=None if not jump or jump.lower() == "none" else jump,
        proxy_command=None if not command or command.lower() == "none" else command,
        password_auth=flag("passwordauthentication", True),
        batch_mode=flag("batchmode", False),
        config_file=config_file,
    )


def _expand(path: str, tokens: dict[str, str]) -> str:
    """%-tokens and ~ in a path, for the keys paramiko does not expand itself."""
    path = re.sub(r"%.", lambda m: tokens.get(m.group(0), m.group(0)), path)
    return os.path.expanduser(path)


def _identity_files(configured: list[str]) -> tuple[str, ...]:
    """The configured keys (paramiko expanded their tokens), else OpenSSH's defaults present."""
    if configured:
        return tuple(dict.fromkeys(os.path.expanduser(p) for p in configured))
    names = ("id_ed25519", "id_ecdsa", "id_rsa")
    defaults = (os.path.expanduser(f"~/.ssh/{name}") for name in names)
    return tuple(p for p in defaults if os.path.isfile(p))


def parse_jump(spec: str) -> tuple[Optional[str], str, Optional[int]]:
    """One ProxyJump hop, "[user@]host[:port]" or "ssh://[user@]host[:port]"."""
    text = spec[len("ssh://"):] if spec.startswith("ssh://") else spec
    user, _, hostport = text.rpartition("@")
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", hostport)
    if not match or (user == "" and "@" in text):
        raise UsageError(f"ProxyJump {spec!r}: expected [user@]host[:port]")
    host = match.group(1) or match.group(3)
    port = match.group(2) or match.group(4)
    if port is not None and not 0 < int(port) < 65536:
        raise UsageError(f"ProxyJump {spec!r}: bad port {port}")
    return user or None, host, int(port) if port else None
