"""Batched channel writes (bacpac/transport/ssh/packets.py) against a real OpenSSH server: the
bytes arrive whole with aes128-gcm, across key exchanges the server starts, and other ciphers
fall back to Paramiko's own Channel.send."""
from __future__ import annotations

import hashlib
import os
from typing import Iterator

import paramiko
import pytest

import bacpac.transport.ssh.connection
from bacpac.transport.ssh.connection import SshOptions, connect
from bacpac.transport.ssh.packets import BatchWriter
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


def test_other_ciphers_fall_back_to_channel_send(sshd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bacpac.transport.ssh.connection, "PREFERRED_CIPHER", "aes128-ctr")
    data = os.urandom(4 << 20)
    digest, batched = _send_and_hash(sshd, data, 1 << 20)
    assert not batched
    assert digest == hashlib.sha256(data).hexdigest()


def test_a_paramiko_without_the_expected_internals_gets_no_batch_writer() -> None:
    class Bare:
        packetizer = object()

    assert BatchWriter.for_channel(Bare(), object()) is None
    assert BatchWriter.for_channel(object(), object()) is None
