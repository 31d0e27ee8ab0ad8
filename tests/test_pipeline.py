"""The client's stream: what reaches the sender, in what order, and when."""
import hashlib
import threading

from bacpac import pipeline
from clirun import MiB, write_file
from test_directio import Collect, stream


def test_a_hole_is_sent_before_its_zeros_are_hashed(tmp_path, mocker):
    """The hole's frame needs nothing of the image's sha256: the sender has it while the hasher
    is still at its zeros. (A disk half empty ends in a long hole: the helper's final fsync
    then runs under that hashing instead of after it.) The digest is the same."""
    data = bytes(range(256)) * 4096  # 1 MiB
    path = write_file(tmp_path / "src.img", 64 * MiB, {0: data})
    sent = threading.Event()
    real = pipeline.zero_chunks

    def zeros_once_sent(size):
        assert sent.wait(10), "the hole was held back until its zeros were hashed"
        return real(size)

    mocker.patch("bacpac.pipeline.zero_chunks", side_effect=zeros_once_sent)

    class Sink(Collect):
        def hole(self, offset, size):
            super().hole(offset, size)
            sent.set()

    sink, result = stream(str(path), sink=Sink)
    assert sink.holes == [(MiB, 63 * MiB)]
    assert bytes(sink.image[:MiB]) == data
    assert result.sha256 == hashlib.sha256(data + bytes(63 * MiB)).hexdigest()
