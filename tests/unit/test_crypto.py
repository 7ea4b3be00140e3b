"""Key wrapping and the chunked stream format: round trips, and every way of tampering with a
stream is caught with the right error."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vauban.crypto import envelope
from vauban.crypto.stream import (
    HEADER_BYTES,
    MIN_CHUNK_SIZE,
    BadHeader,
    ChunkRejected,
    Decryptor,
    Encryptor,
    Truncated,
)

KEY = bytes(range(32))
STREAM_ID = bytes(range(16, 32))
CHUNK = MIN_CHUNK_SIZE
SEALED = CHUNK + envelope.TAG_BYTES


def encrypt(data: bytes, key: bytes = KEY, chunk: int = CHUNK) -> bytes:
    encryptor = Encryptor(key, STREAM_ID, chunk)
    return encryptor.header + b"".join(encryptor.update(data)) + encryptor.finalize()


def decrypt(
    stream: bytes, key: bytes = KEY, stream_id: bytes = STREAM_ID, chunk: int = CHUNK
) -> bytes:
    decryptor = Decryptor(key, stream_id, chunk)
    return decryptor.update(stream) + decryptor.finalize()


def split(stream: bytes) -> tuple[bytes, list[bytes]]:
    """The header and the sealed chunks of a stream made with CHUNK."""
    body = stream[HEADER_BYTES:]
    return stream[:HEADER_BYTES], [body[i : i + SEALED] for i in range(0, len(body), SEALED)]


# -- envelope -------------------------------------------------------------------------------


def test_wrap_round_trip_and_fresh_nonces() -> None:
    kek, key = envelope.generate_key(), envelope.generate_key()
    first = envelope.wrap_key(kek, key, b"db/uid-1")
    assert envelope.unwrap_key(kek, first, b"db/uid-1") == key
    assert envelope.wrap_key(kek, key, b"db/uid-1") != first
    assert key not in first


@pytest.mark.parametrize(
    "change",
    ["kek", "context", "flip", "truncate", "version"],
)
def test_unwrap_refuses_anything_else(change: str) -> None:
    kek, key = envelope.generate_key(), envelope.generate_key()
    wrapped = envelope.wrap_key(kek, key, b"context")
    context = b"context"
    if change == "kek":
        kek = envelope.generate_key()
    elif change == "context":
        context = b"contexT"
    elif change == "flip":
        wrapped = wrapped[:20] + bytes([wrapped[20] ^ 1]) + wrapped[21:]
    elif change == "truncate":
        wrapped = wrapped[:-1]
    else:
        wrapped = b"\x02" + wrapped[1:]
    with pytest.raises(envelope.WrongKey, match="wrong or rotated-away data key"):
        envelope.unwrap_key(kek, wrapped, context)


def test_keys_must_be_256_bits() -> None:
    with pytest.raises(ValueError, match="32 bytes, not 16"):
        envelope.wrap_key(os.urandom(16), envelope.generate_key(), b"")
    with pytest.raises(ValueError, match="32 bytes"):
        envelope.wrap_key(envelope.generate_key(), b"short", b"")


# -- stream: round trips --------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=6 * CHUNK),
    chunk=st.sampled_from([CHUNK, CHUNK + 7, 3 * CHUNK]),
    cuts=st.lists(st.integers(min_value=0, max_value=6 * CHUNK), max_size=6),
)
def test_round_trip_whatever_the_pieces(data: bytes, chunk: int, cuts: list[int]) -> None:
    encryptor = Encryptor(KEY, STREAM_ID, chunk)
    stream = encryptor.header
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    for start, end in itertools.pairwise(bounds):
        stream += b"".join(encryptor.update(data[start:end]))
    stream += encryptor.finalize()

    full_chunks = len(data) // chunk
    assert len(stream) == HEADER_BYTES + (full_chunks + 1) * 16 + len(data)

    decryptor = Decryptor(KEY, STREAM_ID, chunk)
    plain = b""
    for start in range(0, len(stream), 997):  # delivered in pieces unrelated to chunks
        plain += decryptor.update(stream[start : start + 997])
    assert plain + decryptor.finalize() == data


def test_empty_stream_and_exact_multiple_have_a_final_chunk() -> None:
    assert decrypt(encrypt(b"")) == b""
    data = os.urandom(2 * CHUNK)
    _, chunks = split(encrypt(data))
    assert [len(c) for c in chunks] == [SEALED, SEALED, 16]
    assert decrypt(encrypt(data)) == data


# -- stream: tampering ----------------------------------------------------------------------

DATA = os.urandom(3 * CHUNK + 100)


def tampered(how: str) -> bytes:
    header, chunks = split(encrypt(DATA))
    if how == "flip-data":
        body = bytearray(b"".join(chunks))
        body[CHUNK + 5] ^= 0x40
        return header + bytes(body)
    if how == "flip-tag":
        chunks[0] = chunks[0][:-1] + bytes([chunks[0][-1] ^ 1])
    elif how == "swap":
        chunks[0], chunks[1] = chunks[1], chunks[0]
    elif how == "drop-middle":
        del chunks[1]
    elif how == "duplicate":
        chunks.insert(1, chunks[1])
    elif how == "drop-final":
        del chunks[-1]
    elif how == "cut-in-chunk":
        return (header + b"".join(chunks))[:-10]
    elif how == "append":
        return header + b"".join(chunks) + b"more"
    elif how == "append-chunk":
        chunks.append(chunks[0])
    elif how == "other-stream-chunk":
        # Even under the same key, another stream's chunk carries another header.
        other = Encryptor(KEY, os.urandom(16), CHUNK)
        others = other.update(os.urandom(len(DATA)))
        chunks[2] = others[2]
    return header + b"".join(chunks)


@pytest.mark.parametrize(
    ("how", "error"),
    [
        ("flip-data", ChunkRejected),
        ("flip-tag", ChunkRejected),
        ("swap", ChunkRejected),
        ("drop-middle", ChunkRejected),
        ("duplicate", ChunkRejected),
        ("drop-final", Truncated),
        ("cut-in-chunk", ChunkRejected),
        ("append", ChunkRejected),
        ("append-chunk", ChunkRejected),
        ("other-stream-chunk", ChunkRejected),
    ],
)
def test_tampering_is_detected(how: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        decrypt(tampered(how))


def test_wrong_key_fails_at_the_first_chunk() -> None:
    with pytest.raises(ChunkRejected, match="chunk 0"):
        decrypt(encrypt(DATA), key=envelope.generate_key())


def test_header_is_checked_against_what_the_manifest_expects() -> None:
    stream = encrypt(DATA)
    with pytest.raises(BadHeader, match="does not match its manifest"):
        decrypt(stream, stream_id=os.urandom(16))
    with pytest.raises(BadHeader, match="does not match its manifest"):
        decrypt(stream, chunk=2 * CHUNK)
    with pytest.raises(BadHeader, match="not a Vauban"):
        decrypt(b"PGDMP" + stream[5:])
    with pytest.raises(BadHeader, match="version 2 is not supported"):
        decrypt(stream[:4] + b"\x02" + stream[5:])


def test_altered_header_fields_fail_authentication() -> None:
    # A header edited to match another expectation still fails: every chunk authenticates it.
    other_id = os.urandom(16)
    stream = encrypt(DATA)
    forged = stream[: HEADER_BYTES - 16] + other_id + stream[HEADER_BYTES:]
    with pytest.raises(ChunkRejected, match="chunk 0"):
        decrypt(forged, stream_id=other_id)


@pytest.mark.parametrize("keep", [0, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + SEALED])
def test_truncation_anywhere_is_detected(keep: int) -> None:
    with pytest.raises(Truncated):
        decrypt(encrypt(DATA)[:keep])


def test_finalized_streams_take_no_more() -> None:
    encryptor = Encryptor(KEY, STREAM_ID, CHUNK)
    encryptor.finalize()
    with pytest.raises(ValueError, match="finalized"):
        encryptor.update(b"x")
