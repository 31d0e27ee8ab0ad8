"""Decompression on the target: zstandard when the host has it, else the zstd tool through a
pipe, else zlib from the standard library.

The client reads HELLO's "codecs" and compresses with the best one both ends have.
"""
import zlib

from . import zstdframe
from ..errors import ProtocolError
from .protocol import CODEC_RAW, CODEC_ZLIB, CODEC_ZSTD

try:
    import zstandard
except ImportError:  # a bare standby host: the zstd tool, or zlib frames
    zstandard = None  # type: ignore[assignment]  # mypy types the name as the module


def available():
    # type: () -> list
    """Codec names this host can decompress, best first."""
    names = ["zstd"] if zstdframe.backend() else []
    return names + ["zlib", "raw"]


def zstd_backend():
    # type: () -> str
    """"zstandard", "cli" or "": reported in HELLO, shown in the summary."""
    return zstdframe.backend()


class Decompressor(object):
    """Turns a DATA payload back into exactly `expected` bytes, or raises ProtocolError."""

    def __init__(self):
        # type: () -> None
        self._zstd = zstandard.ZstdDecompressor() if zstandard is not None else None

    def decompress(self, flags, payload, expected):
        # type: (int, bytes, int) -> bytes
        try:
            data = self._decompress(flags, payload, expected)
        except (zlib.error, ValueError) as e:
            raise ProtocolError("corrupt compressed block: %s" % e)
        except Exception as e:  # zstandard.ZstdError has no stable import path across versions
            if zstandard is not None and isinstance(e, zstandard.ZstdError):
                raise ProtocolError("corrupt compressed block: %s" % e)
            raise
        if len(data) != expected:
            raise ProtocolError("block decompressed to %d bytes, %d expected" % (len(data), expected))
        return data

    def _decompress(self, flags, payload, expected):
        # type: (int, bytes, int) -> bytes
        if flags == CODEC_ZSTD:
            if self._zstd is None:
                return zstdframe.decompress_frame(payload, expected)  # one zstd process a block
            return self._zstd.decompress(payload, max_output_size=expected)
        if flags == CODEC_ZLIB:
            z = zlib.decompressobj()
            data = z.decompress(payload, expected)
            if z.unconsumed_tail or not z.eof:
                raise ProtocolError("zlib block longer than its %d bytes, or cut short" % expected)
            return data
        if flags == CODEC_RAW:
            return payload
        raise ProtocolError("unknown codec %d" % flags)
