"""Channel data written in batches: the client's one hot loop through Paramiko, made lean.

# Strategy: Paramiko sends a channel's data one packet (32 KiB, OpenSSH's limit for a session
# channel) at a time, each through a Message, the transport's key-exchange gate, the
# packetizer's padding, encryption and a socket send of its own: a cost in the sending thread
# for every packet, which adds up over the hundreds of MB a disk puts on the wire, on a
# machine whose two cores are the limit on loopback; AES-GCM itself is a small part of it
# (docs/performance.md). This
# writer does what Channel.send does, packet for packet the same bytes on the wire (RFC 4253
# packets, RFC 5647 AES-GCM), for up to BATCH packets at a time: it takes the send window for
# all of them under the channel's lock, waits at the transport's key-exchange gate once,
# then, holding the packetizer's write lock as Paramiko does for each packet, pads and
# encrypts each one (advancing the GCM nonce and the sequence number) and writes them all in
# one socket write. It works only where that is all there is to it, and only as far as it was
# checked: the AES-GCM ciphers at OpenSSH's framing (aes128-gcm@openssh.com, which connection.py
# asks for first, and aes256-gcm@openssh.com), no compression, and a Paramiko of the versions in
# CHECKED_VERSIONS, whose private attributes it reads and writes (tests/test_sshdata.py
# compares its bytes with Packetizer.send_message's). Anything else falls back to
# Channel.send, so nothing depends on it but speed. Paramiko's own rekey trigger is not
# consulted: connection.py sets its limits so high that only OpenSSH starts key exchanges, which
# this writer waits out at the gate as Channel.send would.
"""
from __future__ import annotations

import os
import struct
import time
from typing import Any, Optional

import paramiko

MSG_CHANNEL_DATA = 94  # RFC 4254
BATCH = 8  # packets per socket write: 256 KiB
_KEX_TIMEOUT = 30.0  # seconds to wait for a key exchange the server started, as Paramiko does

CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")  # RFC 5647 as OpenSSH frames it
CHECKED_VERSIONS = ((3, 5), (5, 2))  # Paramiko releases from 3.5 up to, not including, 5.2

_PACKETIZER = "_Packetizer__"  # Paramiko's name-mangled private attributes
_NEEDED = ("write_lock", "block_engine_out", "aead_out", "etm_out", "compress_engine_out",
           "iv_out", "block_size_out", "sequence_number_out", "sent_bytes", "sent_packets")


class BatchWriter:
    """Sends a channel's data in batches of packets; Channel.send's job, with less overhead."""

    def __init__(self, transport: Any, chan: Any) -> None:
        self._transport = transport
        self._packetizer = transport.packetizer
        self._chan = chan

    @classmethod
    def for_channel(cls, transport: Any, chan: Any) -> Optional["BatchWriter"]:
        """A writer for `chan`, or None where only Channel.send will do."""
        if not checked_version(paramiko.__version__):
            return None
        packetizer = getattr(transport, "packetizer", None)
        if packetizer is None or not all(hasattr(packetizer, _PACKETIZER + name)
                                         for name in _NEEDED):
            return None
        if not all(hasattr(obj, name) for obj, name in (
                (packetizer, "write_all"), (packetizer, "_inc_iv_counter"),
                (transport, "active"), (transport, "local_cipher"), (transport, "clear_to_send"),
                (transport, "clear_to_send_lock"),
                (chan, "_wait_for_send_window"), (chan, "lock"), (chan, "remote_chanid"))):
            return None
        return cls(transport, chan)

    def usable(self) -> bool:
        """Whether the cipher in force is one this writer can frame (checked per write, since a
        key exchange may change it)."""
        get = self._get
        return (self._transport.local_cipher in CIPHERS and bool(get("aead_out"))
                and not get("etm_out") and get("compress_engine_out") is None
                and get("block_engine_out") is not None)

    def send(self, view: memoryview) -> int:
        """Send a prefix of `view` (up to BATCH packets); its length, 0 if the channel closed."""
        sizes = self._take_window(len(view))
        if not sizes:
            return 0
        self._enter_gate()
        try:
            with self._get("write_lock"):
                if self.usable():
                    self._write_packets(view, sizes)
                else:  # a key exchange brought another cipher: Paramiko frames these
                    self._send_messages(view, sizes)
        finally:
            self._transport.clear_to_send_lock.release()
        return sum(sizes)

    def _take_window(self, wanted: int) -> list[int]:
        """Packet sizes for up to BATCH packets of the window; blocks only for the first."""
        chan = self._chan
        sizes: list[int] = []
        with chan.lock:
            while wanted > 0 and len(sizes) < BATCH:
                if sizes and chan.out_window_size == 0:
                    break  # what we have now is sent now, not held back for more window
                size = chan._wait_for_send_window(wanted)
                if size == 0:
                    break
                sizes.append(size)
                wanted -= size
        return sizes

    def _enter_gate(self) -> None:
        """Hold the transport's send gate, waiting out a key exchange (Paramiko's
        _send_user_message does the same for each packet)."""
        transport = self._transport
        deadline = time.monotonic() + _KEX_TIMEOUT
        while True:
            transport.clear_to_send.wait(0.1)
            if not transport.active:
                raise EOFError("the connection is closed")
            transport.clear_to_send_lock.acquire()
            if transport.clear_to_send.is_set():
                return
            transport.clear_to_send_lock.release()
            if time.monotonic() > deadline:
                raise EOFError("key exchange timed out")

    def _write_packets(self, view: memoryview, sizes: list[int]) -> None:
        """Pad, encrypt and write the packets, as Packetizer.send_message does for an AEAD
        cipher: the length in clear as associated data, then padding length, payload and
        padding encrypted and tagged, the nonce's counter and the sequence number advanced."""
        packetizer = self._packetizer
        engine, block = self._get("block_engine_out"), self._get("block_size_out")
        iv, seq = self._get("iv_out"), self._get("sequence_number_out")
        out, pos = [], 0
        for size in sizes:
            payload = self._payload(size)
            padding = 3 + block - ((len(payload) + size + 4) % block)
            length = struct.pack(">I", 1 + len(payload) + size + padding)
            body = b"".join((bytes((padding,)), payload, view[pos:pos + size],
                             os.urandom(padding)))
            out.append(length)
            out.append(engine.encrypt(iv, body, length))
            iv = packetizer._inc_iv_counter(iv)
            seq = (seq + 1) & 0xFFFFFFFF
            pos += size
        data = b"".join(out)
        self._set("iv_out", iv)
        self._set("sequence_number_out", seq)
        self._set("sent_bytes", self._get("sent_bytes") + len(data))
        self._set("sent_packets", self._get("sent_packets") + len(sizes))
        packetizer.write_all(data)

    def _send_messages(self, view: memoryview, sizes: list[int]) -> None:
        pos = 0
        for size in sizes:
            self._packetizer.send_message(_Message(self._payload(size) + view[pos:pos + size]))
            pos += size

    def _payload(self, size: int) -> bytes:
        """A CHANNEL_DATA message up to its data: type, channel, the data's length."""
        return struct.pack(">BII", MSG_CHANNEL_DATA, self._chan.remote_chanid, size)

    def _get(self, name: str) -> Any:
        return getattr(self._packetizer, _PACKETIZER + name)

    def _set(self, name: str, value: Any) -> None:
        setattr(self._packetizer, _PACKETIZER + name, value)


def checked_version(version: str) -> bool:
    """Whether a Paramiko version is one this writer was checked on."""
    try:
        release = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    low, high = CHECKED_VERSIONS
    return low <= release < high


class _Message:
    """What Packetizer.send_message takes: an object with asbytes()."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def asbytes(self) -> bytes:
        return self._data
