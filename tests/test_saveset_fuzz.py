"""Random damage to a real saveset: refused in one clear line, or restored byte for byte.

Each mutation (bytes flipped, the file cut, bytes inserted or deleted) lands in one of the
saveset's parts: the metadata, the data frames, the trailer, the seek table. Whatever it does,
`verify` and `restore` must never end in a traceback, and never exit 0 with content that differs
from the image: a saveset either proves the image whole or is refused, by verify and restore
alike and in the same words. The reader itself takes hundreds of mutations in process (a
version 3 saveset, one written in version 2, and one that bacpac 0.1.0 wrote in version 1);
the command line takes a few
dozen through the real helper, locally and over ssh.
"""
from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clirun import KiB, Result, bacpac, sha256_of, transport_for
from remote_helper.errors import HelperError
from remote_helper.saveset.format import SavesetWriter
from remote_helper.saveset.reader import SavesetReader, info, verify
from remote_helper.target.imagedigest import ImageDigest
from remote_helper.wire.zstdframe import compress_frame, decompress_frame

V1_SAVESET = Path(__file__).parent / "data" / "saveset-v1.bacpac"  # made by bacpac 0.1.0
V2_SAVESET = Path(__file__).parent / "data" / "saveset-v2.bacpac"  # before the image digest
FRAME = 64 * KiB
PARTS = ("metadata", "frames", "trailer", "seek table")
OPERATIONS = ("flip", "cut", "insert", "delete")


def image_bytes() -> bytes:
    """An odd-sized image: random bytes, text and zeros, so frames of every kind."""
    rng = random.Random(5)
    text = b"".join(b"line %d of a small disk\n" % i for i in range(4000))
    return (rng.randbytes(70 * KiB) + text + bytes(90 * KiB))[:250 * KiB + 77]


def part_spans(raw: bytes) -> dict[str, tuple[int, int]]:
    """[start, end) of each part of a sound saveset."""
    reader = SavesetReader(io.BytesIO(raw))
    table_start = len(raw) - (8 + 12 * (len(reader.entries) + 2) + 9)
    return {"metadata": (0, reader.data_offset),
            "frames": (reader.data_offset, reader.trailer_offset),
            "trailer": (reader.trailer_offset, table_start),
            "seek table": (table_start, len(raw))}


def mutate(raw: bytes, part: str, operation: str, rng: random.Random) -> bytes:
    """`raw` with one `operation` done at a random place in `part`."""
    start, end = part_spans(raw)[part]
    at = rng.randrange(start, end)
    damaged = bytearray(raw)
    if operation == "flip":  # mostly one byte, sometimes a few more in the same part
        for position in [at] + [rng.randrange(start, end) for _ in range(rng.choice((0, 0, 2)))]:
            damaged[position] ^= rng.randrange(1, 256)
    elif operation == "cut":
        del damaged[at:]
    elif operation == "insert":
        damaged[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        del damaged[at:at + rng.randint(1, 16)]
    return bytes(damaged)


# --- the reader, in process --------------------------------------------------------------------

@dataclass(frozen=True)
class Sound:
    raw: bytes
    image: bytes


def image_digest(image: bytes) -> str:
    """The sha256-1m digest a dup reports (split -b 1M --filter=sha256sum | sha256sum)."""
    digest = ImageDigest()
    digest.update(memoryview(image))
    return digest.hexdigest()


def written_saveset() -> Sound:
    image = image_bytes()
    buf = io.BytesIO()
    writer = SavesetWriter(buf, {"kind": "disk", "size": len(image), "frame_size": FRAME,
                                 "source_host": "src", "source_path": "/dev/sdz",
                                 "bacpac_version": "0.0-test"})
    for start in range(0, len(image), FRAME):
        chunk = image[start:start + FRAME]
        writer.add_frame(compress_frame(chunk, 3), len(chunk))
    writer.finish(hashlib.sha256(image).hexdigest(), len(image), image_digest(image))
    return Sound(buf.getvalue(), image)


def restored_in_process(fileobj) -> bytes:
    """What a restore hands on: the frames the reader proved, decompressed."""
    reader = SavesetReader(fileobj)
    return b"".join(decompress_frame(frame, reader.entries[index][1])
                    for index, _, frame in reader.proven_frames(decompress_frame))


def older(path: Path) -> Sound:
    return Sound(path.read_bytes(), restored_in_process(io.BytesIO(path.read_bytes())))


SOUND = {"version 3": written_saveset(), "version 2": older(V2_SAVESET),
         "version 1": older(V1_SAVESET)}
SOUND_DIGESTS = {version: image_digest(sound.image) for version, sound in SOUND.items()}


@settings(max_examples=500, deadline=None)
@given(version=st.sampled_from(sorted(SOUND)), part=st.sampled_from(PARTS),
       operation=st.sampled_from(OPERATIONS), seed=st.integers(0, 2 ** 32))
def test_a_mutated_saveset_is_refused_or_proven_identical(version, part, operation, seed):
    sound = SOUND[version]
    damaged = mutate(sound.raw, part, operation, random.Random(seed))
    verdicts = []
    for read in (verify, info, restored_in_process):
        try:
            outcome = read(io.BytesIO(damaged))
        except HelperError as e:  # SavesetCorrupt, NotASaveset: a clear refusal
            verdicts.append(("refused", read.__name__, e.message))
            continue
        verdicts.append(("ok", read.__name__, ""))
        if read is verify:
            assert outcome["sha256"] == hashlib.sha256(sound.image).hexdigest()
            assert outcome["digest"] == SOUND_DIGESTS[version]
        if read is restored_in_process:
            assert outcome == sound.image
    by_verify, by_info, by_restore = verdicts
    assert (by_restore[0], by_restore[2]) == (by_verify[0], by_verify[2]), verdicts
    # info reads the ends only: what it refuses, verify refuses in the same words
    assert by_info[0] == "ok" or by_info[2] == by_verify[2], verdicts


# --- the command line, through the real helper ------------------------------------------------

@pytest.fixture(scope="module")
def cli_saveset(tmp_path_factory) -> tuple[Path, str]:
    """A saveset that `bacpac backup` wrote, and its image's sha256."""
    directory = tmp_path_factory.mktemp("fuzz")
    image = directory / "disk.img"
    image.write_bytes(image_bytes())
    saveset = directory / "disk.bacpac"
    result = bacpac("backup", "--no-progress", "--block-size", "64K", image, saveset)
    assert result.returncode == 0, result.stderr
    return saveset, sha256_of(image)


def failed_cleanly(run: Result) -> str:
    """The one 'bacpac: ' line of a failed run; never an internal error of either end."""
    assert run.returncode == 1, run
    line = run.error_line
    assert line.startswith("bacpac: "), run.stderr
    assert "internal error" not in run.stderr and "helper failed" not in run.stderr, run.stderr
    return line


def check_mutation(transport, image_sha256: str, damaged: Path, target: Path) -> None:
    """verify and restore of one damaged saveset: the image, or the same refusal from both."""
    verified = bacpac("verify", *transport.args(), transport.target(damaged))
    restored = bacpac("restore", *transport.args(), "--no-progress",
                      transport.target(damaged), target)
    if restored.returncode == 0:
        assert sha256_of(target) == image_sha256, "restore exited 0 with other content"
        assert verified.returncode == 0, verified.stderr
        return
    restore_line = failed_cleanly(restored)
    assert restore_line.startswith(failed_cleanly(verified)), "verify and restore disagree"


@pytest.mark.parametrize("name, count", [("local", 24), ("ssh", 4)])
def test_verify_and_restore_of_a_mutated_saveset_refuse_it_or_give_the_image(
        name, count, cli_saveset, tmp_path, request, no_helper_left):
    transport = transport_for(name, request)
    saveset, image_sha256 = cli_saveset
    raw = saveset.read_bytes()
    rng = random.Random(f"saveset fuzz {name}")
    for number in range(count):
        part, operation = PARTS[number % len(PARTS)], rng.choice(OPERATIONS)
        damaged = tmp_path / f"damaged-{number}.bacpac"
        damaged.write_bytes(mutate(raw, part, operation, rng))
        check_mutation(transport, image_sha256, damaged, tmp_path / f"restored-{number}.img")
