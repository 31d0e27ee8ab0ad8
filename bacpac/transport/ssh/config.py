"""SSH options as OpenSSH applies them: command line first, then ssh_config, first value wins.

# Strategy: where the OpenSSH client is installed, OpenSSH itself resolves the configuration:
# `ssh -G` prints every option as ssh would apply it to the host (Include, Match, % tokens,
# canonical names, its defaults), one "key value" line each. Without it, config_file.py
# reads the files the same way, as far as it can. Either way, the result is validated once
# into a frozen HostConfig; nothing below this reads ssh_config.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Optional

from . import config_file
from ...errors import UsageError
from .config_file import expand, local_user


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
    identity_files: tuple[str, ...]   # the configured (else the default) keys that exist
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


PASSWORD_VARIABLE_PREFIX = "BACPAC_PASSWORD_"


def password_variable(alias: str) -> str:
    """The environment variable that holds the password (or key passphrase) of the host
    named `alias`, as $SSHPASS does for every host: BACPAC_PASSWORD_ and the alias in capitals,
    each character that is not a letter or a digit as "_" (standby-1 → BACPAC_PASSWORD_STANDBY_1).
    A fan-out's hosts each get their own, and `bacpac run` passes a host's password_env so."""
    return PASSWORD_VARIABLE_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", alias).upper()


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
    ssh = shutil.which("ssh")
    if ssh is None:
        read_from, found = config_file.lookup(host, _command_line_block(user, opts),
                                              opts.config_file)
    else:
        read_from, found = opts.config_file, _ssh_g(ssh, host, user, opts)
    for key in (*_NUMBERS, *_BOOLEAN_KEYS, "stricthostkeychecking"):
        problem = _check_value(key, found[key]) if key in found else None
        if problem:
            raise UsageError(f"{read_from or 'ssh options'}: {host}: {problem}")
    return _host_config(host, found, read_from)


SSH_G_TIMEOUT = 30.0  # seconds: a "Match exec" command that hangs must not hang bacpac


def _ssh_g(ssh: str, host: str, user: Optional[str], opts: SshOptions) -> dict:
    """The options of `host` as `ssh -G` prints them: lowercase keys, the first value of each
    (as ssh applies it), IdentityFile as the list of all; "none" means unset."""
    if opts.config_file is not None:
        config_file.read_text(opts.config_file)  # our words for a -F that cannot be read
    status, out, err = _run_alone([ssh, "-G", *_ssh_arguments(user, opts), "--", host], host)
    if status != 0:
        problem = "; ".join(line.strip() for line in err.splitlines() if line.strip())
        raise UsageError(f"{host}: ssh refused the configuration: {problem or 'no reason given'}")
    found: dict = {"identityfile": []}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key == "identityfile":
            found[key].append(value)
        elif key not in found and value.lower() != "none":
            found[key] = value
    return found


def _run_alone(command: list[str], host: str) -> tuple[int, str, str]:
    """Run `ssh -G` with a deadline (a Match exec command may hang)."""
    try:
        status, out, err = config_file.run_alone(command, SSH_G_TIMEOUT)
    except OSError as e:
        raise UsageError(f"{host}: cannot run {command[0]} -G: {e.strerror}") from None
    except subprocess.TimeoutExpired:
        raise UsageError(f"{host}: ssh -G did not print the configuration within "
                         f"{SSH_G_TIMEOUT:g} s (a Match exec command that hangs?)") from None
    return status, out, err or ""


def _ssh_arguments(user: Optional[str], opts: SshOptions) -> list[str]:
    """The command line as ssh's own options; a user in user@host beats -l, as with ssh."""
    args = ["-F", opts.config_file] if opts.config_file is not None else []
    login = user or opts.login_name
    if login:
        args += ["-l", login]
    if opts.port is not None:
        args += ["-p", str(opts.port)]
    for path in opts.identity_files:
        args += ["-i", path]
    for key, value in opts.options:
        args += ["-o", f"{key}={value}"]
    return args


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


def _host_config(alias: str, found: dict, read_from: Optional[str]) -> HostConfig:
    hostname = found["hostname"].lower()
    port = int(found.get("port", 22))
    user = found.get("user") or local_user()
    tokens = config_file.tokens(alias, hostname, port, user)

    def flag(key: str, default: bool) -> bool:
        return _BOOLEANS[found[key].lower()] if key in found else default

    def files(key: str, default: str) -> tuple[str, ...]:
        return tuple(expand(p, tokens) for p in found.get(key, default).split())

    jump = found.get("proxyjump")
    command = found.get("proxycommand")
    timeout = int(found.get("connecttimeout", 0))
    return HostConfig(
        alias=alias, hostname=hostname, port=port, user=user,
        identity_files=_identity_files([expand(p, tokens) for p in found.get("identityfile", [])]),
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
        proxy_command=(None if not command or command.lower() == "none"
                       else expand(command, tokens, home=False)),
        password_auth=flag("passwordauthentication", True),
        batch_mode=flag("batchmode", False),
        config_file=read_from,
    )


# The keys ssh tries when none is configured, in its order; `ssh -G` lists them as if
# configured, and ssh skips those that are not there.
_DEFAULT_KEYS = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_xmss",
                 "id_dsa")


def _identity_files(configured: list[str]) -> tuple[str, ...]:
    """The configured keys, else OpenSSH's defaults; a default one only when it exists."""
    defaults = [os.path.expanduser(f"~/.ssh/{name}") for name in _DEFAULT_KEYS]
    paths = dict.fromkeys(configured or defaults)
    return tuple(p for p in paths if p not in defaults or os.path.isfile(p))


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
