"""Batched channel writes (bacpac/transport/ssh/packets.py): the very bytes Paramiko's own Channel.send and
Packetizer.send_message put on the socket for the same data and cipher state; against a real
OpenSSH server, whole with AES-GCM and across key exchanges the server starts; and off, with
the copy still exact, for any other cipher or a Paramiko it was not checked on."""
from __future__ import annotations

import hashlib
import os
import threading
from typing import Iterator

import paramiko
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bacpac.transport.ssh.connection import SshOptions, connect
from bacpac.transport.ssh.packets import CIPHERS, BatchWriter, checked_version
from clirun import Transport
from fixtures_sshd import SshServer, start_sshd

SHA256_STDIN = "sha256sum -b | cut -d' ' -f1"


@pytest.fixture(autouse=True)
def no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@pytest.fixture(scope="module")
def rekeying_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """An sshd that starts a key exchange after every MiB it receives."""
    with start_sshd(str(tmp_path_factory.mktemp("sshd-rekey")),
                    settings=["RekeyLimit 1M"]) as server:
        yield server


def _send_and_hash(server: SshServer, data: bytes, piece: int) -> tuple[str, bool]:
    """Write data in pieces of `piece` bytes to `sha256sum` on the server; (its digest, whether
    the writes were batched)."""
    with connect(server.host, None, SshOptions(config_file=server.config_path),
                 interactive=False) as conn:
        chan = conn.exec(SHA256_STDIN)
        batched = chan.batched
        view = memoryview(data)
        for pos in range(0, len(data), piece):
            chan.write(view[pos:pos + piece])
        chan.close_write()
        out = b""
        while chunk := chan.read(65536):
            out += chunk
        assert chan.wait(30) == 0, chan.stderr_tail()
        return out.decode().strip(), batched


def test_batched_writes_arrive_whole(sshd) -> None:
    # Odd piece sizes: packets of every length, windows taken part-way through a piece.
    data = os.urandom(24 << 20) + b"tail"
    digest, batched = _send_and_hash(sshd, data, (1 << 20) + 4097)
    assert batched
    assert digest == hashlib.sha256(data).hexdigest()


def test_batched_writes_survive_key_exchanges_the_server_starts(
        rekeying_sshd, monkeypatch: pytest.MonkeyPatch) -> None:
    activations = []
    activate = paramiko.Transport._activate_outbound

    def counting(self: paramiko.Transport) -> None:
        activations.append(self.local_cipher)
        activate(self)

    monkeypatch.setattr(paramiko.Transport, "_activate_outbound", counting)
    data = os.urandom(12 << 20)
    digest, batched = _send_and_hash(rekeying_sshd, data, 3 << 20)
    assert batched
    assert digest == hashlib.sha256(data).hexdigest()
    # The first key exchange, then one for about every MiB the server received.
    assert len(activations) >= 6, activations


@pytest.mark.parametrize("cipher, batched", [("aes128-ctr", False), ("aes256-ctr", False),
                                            ("aes256-gcm@openssh.com", True)])
def test_the_fast_path_runs_only_for_aes_gcm_and_every_cipher_copies_exactly(
        sshd_with, tmp_path, cipher, batched) -> None:
    server = sshd_with(f"Ciphers {cipher}")
    with connect(server.host, None, SshOptions(config_file=server.config_path),
                 interactive=False) as conn:
        assert conn.cipher == cipher
        assert conn.exec("cat > /dev/null").batched == batched
    data = os.urandom(6 << 20)
    source, target = tmp_path / "source.img", tmp_path / "target.img"
    source.write_bytes(data)
    run = Transport("ssh", server).dup(source, target, "--block-size", "1M")
    assert run.returncode == 0, run.stderr
    assert target.read_bytes() == data


class _Wire:
    """A socket that keeps every byte sent on it."""

    def __init__(self) -> None:
        self.sent = bytearray()

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)


class _Gate:
    """What BatchWriter and Channel.send use of a Transport, around a real Packetizer on a
    _Wire: no key exchange is under way, so a user message goes straight to send_message."""

    active = True

    def __init__(self, cipher: str, key: bytes, iv: bytes) -> None:
        self.local_cipher = cipher
        self.wire = _Wire()
        self.packetizer = paramiko.Packetizer(self.wire)
        # As Transport._activate_outbound sets up an AES-GCM cipher.
        self.packetizer.set_outbound_cipher(AESGCM(key), 16, None, 16, None, aead=True,
                                            iv_out=iv)
        self.clear_to_send = threading.Event()
        self.clear_to_send.set()
        self.clear_to_send_lock = threading.Lock()

    def _send_user_message(self, message: paramiko.Message) -> None:
        self.packetizer.send_message(message)

    def state(self) -> tuple:
        """The packetizer's outbound nonce and sequence number."""
        return (self.packetizer._Packetizer__iv_out,
                self.packetizer._Packetizer__sequence_number_out)


def _channel(gate: _Gate) -> paramiko.Channel:
    """A session channel as a client holds it once open: OpenSSH's 32 KiB packets."""
    chan = paramiko.Channel(3)
    chan.transport = gate
    chan.remote_chanid = 7
    chan.out_window_size = 1 << 30
    chan.out_max_packet_size = 32768
    return chan


def _write(send, view: memoryview) -> None:
    pos = 0
    while pos < len(view):
        pos += send(view[pos:])


@pytest.mark.parametrize("cipher", CIPHERS)
def test_batched_bytes_equal_what_paramikos_send_message_puts_on_the_socket(
        cipher, monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(16 if cipher.startswith("aes128") else 32)
    iv = os.urandom(12)
    pieces = [b"x", os.urandom(100_000), os.urandom(9 * 32704 + 5)[3:], os.urandom(32704)]
    # The padding is random in both: the same "random" bytes for both, to compare the rest.
    monkeypatch.setattr(os, "urandom", lambda n: bytes(range(11, 11 + n)))
    ours, theirs = _Gate(cipher, key, iv), _Gate(cipher, key, iv)
    for gate in (ours, theirs):  # a message before: sequence numbers and nonces under way
        gate.packetizer.send_message(paramiko.Message(b"\x02\x00\x00\x00\x03abc"))
    writer = BatchWriter.for_channel(ours, _channel(ours))
    assert writer is not None and writer.usable()
    reference = _channel(theirs)
    for piece in pieces:
        _write(writer.send, memoryview(piece))
        _write(reference.send, memoryview(piece))
    assert ours.state() == theirs.state()
    assert ours.state()[1] == 1 + sum(-(-len(p) // 32704) for p in pieces)
    assert bytes(ours.wire.sent) == bytes(theirs.wire.sent)
    # And Paramiko's own next packet follows on from where the writer left its state.
    for gate in (ours, theirs):
        gate.packetizer.send_message(paramiko.Message(b"\x02\x00\x00\x00\x03end"))
    assert bytes(ours.wire.sent) == bytes(theirs.wire.sent)


def test_the_fast_path_is_off_for_a_paramiko_it_was_not_checked_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gate = _Gate(CIPHERS[0], os.urandom(16), os.urandom(12))
    for version, checked in [("3.4.1", False), ("3.5.0", True), ("5.1.0", True),
                             ("5.2.0", False), ("6.0.0", False), ("5.2.0.dev1", False),
                             ("unknown", False)]:
        monkeypatch.setattr(paramiko, "__version__", version)
        assert checked_version(version) == checked, version
        assert (BatchWriter.for_channel(gate, _channel(gate)) is not None) == checked, version


def test_the_fast_path_is_off_for_a_cipher_name_it_was_not_written_for() -> None:
    gate = _Gate("aes128-gcm@example.com", os.urandom(16), os.urandom(12))
    writer = BatchWriter.for_channel(gate, _channel(gate))
    assert writer is not None and not writer.usable()


def test_a_paramiko_without_the_expected_internals_gets_no_batch_writer() -> None:
    class Bare:
        packetizer = object()

    assert BatchWriter.for_channel(Bare(), object()) is None
    assert BatchWriter.for_channel(object(), object()) is None
