"""Chunked authenticated encryption of a stream (AES-256-GCM), for backups of any size.

A stream is encrypted and decrypted incrementally, in fixed-size chunks, so neither side
holds it whole. The format (version 1):

    header   = b"VBKS" || version (u8 = 1) || chunk size (u32, big-endian) || stream id (16)
    chunk i  = AES-256-GCM(key, nonce_i, plaintext_i, aad = header || i (u64) || final (u8))
    nonce_i  = i (u64, big-endian) || final (u8) || 0x000000

Every chunk but the last holds exactly `chunk size` bytes of plaintext; the last one (the
*final* chunk, flag 1) holds fewer, possibly none. So each chunk authenticates its position
and whether it ends the stream, and every chunk authenticates the header: reordered, dropped,
duplicated or altered chunks fail authentication, a stream cut at a chunk boundary lacks its
final chunk, and bytes appended after it turn the final chunk into one that does not open.

Nonces are counters, which is safe only because each stream has its own fresh key: a key must
never encrypt two streams (`Encryptor` is given a new key per backup).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vauban.crypto.envelope import TAG_BYTES, check_key

MAGIC = b"VBKS"
VERSION = 1
STREAM_ID_BYTES = 16
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 1 << 10
MAX_CHUNK_SIZE = 1 << 26
_HEADER = struct.Struct(">4sBI16s")
HEADER_BYTES = _HEADER.size
_POSITION = struct.Struct(">QB")


class StreamError(Exception):
    """The encrypted stream is not what was written: corrupt, truncated, tampered with, or
    opened with the wrong key."""


class BadHeader(StreamError):
    """The stream does not start with the header this reader expects."""


class ChunkRejected(StreamError):
    """A chunk failed authentication: altered, moved, from another stream, or wrong key."""


class Truncated(StreamError):
    """The stream ends before its final chunk."""


@dataclass(frozen=True)
class Header:
    version: int
    chunk_size: int
    stream_id: bytes

    def encode(self) -> bytes:
        return _HEADER.pack(MAGIC, self.version, self.chunk_size, self.stream_id)

    @classmethod
    def decode(cls, data: bytes) -> Header:
        if len(data) < HEADER_BYTES:
            raise Truncated("the stream is shorter than its header")
        magic, version, chunk_size, stream_id = _HEADER.unpack(data[:HEADER_BYTES])
        if magic != MAGIC:
            raise BadHeader("this is not a Vauban encrypted stream")
        if version != VERSION:
            raise BadHeader(f"stream format version {version} is not supported (only {VERSION})")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise BadHeader(f"chunk size {chunk_size} is out of bounds")
        return cls(version, chunk_size, stream_id)


def _nonce_and_aad(header: bytes, index: int, final: bool) -> tuple[bytes, bytes]:
    position = _POSITION.pack(index, final)
    return position + b"\x00\x00\x00", header + position


def _check_stream(stream_id: bytes, chunk_size: int) -> None:
    if len(stream_id) != STREAM_ID_BYTES:
        raise ValueError(f"a stream id is {STREAM_ID_BYTES} bytes, not {len(stream_id)}")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size must be in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]")


class Encryptor:
    """Encrypts a stream fed piece by piece; holds at most one chunk of plaintext.

    `header` comes first in the output, then whatever `update` and `finalize` return."""

    def __init__(self, key: bytes, stream_id: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        check_key(key, "stream key")
        _check_stream(stream_id, chunk_size)
        self._aead = AESGCM(key)
        self._chunk_size = chunk_size
        self.header = Header(VERSION, chunk_size, stream_id).encode()
        self._pending = bytearray()
        self._index = 0
        self._finalized = False

    def update(self, data: bytes) -> list[bytes]:
        """The chunks completed by `data` (often none, sometimes several)."""
        if self._finalized:
            raise ValueError("the stream is already finalized")
        self._pending += data
        size = self._chunk_size
        if len(self._pending) < size:
            return []
        count = len(self._pending) // size
        with memoryview(self._pending) as view:
            chunks = [
                self._seal(view[i * size : (i + 1) * size], final=False) for i in range(count)
            ]
        del self._pending[: count * size]
        return chunks

    def finalize(self) -> bytes:
        """The final chunk: the remaining plaintext (shorter than a chunk, maybe empty)."""
        if self._finalized:
            raise ValueError("the stream is already finalized")
        self._finalized = True
        final = self._seal(bytes(self._pending), final=True)
        self._pending.clear()
        return final

    def _seal(self, plaintext: bytes | memoryview, *, final: bool) -> bytes:
        nonce, aad = _nonce_and_aad(self.header, self._index, final)
        self._index += 1
        return self._aead.encrypt(nonce, plaintext, aad)


class Decryptor:
    """Decrypts and authenticates a stream fed piece by piece.

    The caller says which stream it expects (the id and chunk size recorded beside it), so a
    stream swapped for another one encrypted under the same key is refused at its header.
    Plaintext is returned only once its chunk has been authenticated; a caller that must act
    on nothing unauthenticated still has to wait for `finalize` before trusting the whole."""

    def __init__(self, key: bytes, stream_id: bytes, chunk_size: int) -> None:
        check_key(key, "stream key")
        _check_stream(stream_id, chunk_size)
        self._aead = AESGCM(key)
        self._expected = Header(VERSION, chunk_size, stream_id)
        self._sealed_size = chunk_size + TAG_BYTES
        self._header: bytes | None = None
        self._buffer = bytearray()
        self._index = 0
        self._finalized = False

    @property
    def chunks(self) -> int:
        """How many chunks were authenticated so far."""
        return self._index

    def update(self, data: bytes) -> bytes:
        if self._finalized:
            raise ValueError("the stream is already finalized")
        self._buffer += data
        if self._header is None:
            if len(self._buffer) < HEADER_BYTES:
                return b""
            header = Header.decode(bytes(self._buffer[:HEADER_BYTES]))
            if header != self._expected:
                raise BadHeader(
                    "the stream's header does not match its manifest (another backup's data?)"
                )
            self._header = header.encode()
            del self._buffer[:HEADER_BYTES]
        # Only a chunk followed by more data is known not to be the last one.
        size = self._sealed_size
        count = (len(self._buffer) - 1) // size if self._buffer else 0
        if count == 0:
            return b""
        with memoryview(self._buffer) as view:
            opened = [
                self._open(view[i * size : (i + 1) * size], final=False) for i in range(count)
            ]
        del self._buffer[: count * size]
        return b"".join(opened)

    def finalize(self) -> bytes:
        """The final chunk's plaintext; raises unless the stream ended exactly there."""
        if self._finalized:
            raise ValueError("the stream is already finalized")
        self._finalized = True
        if self._header is None:
            raise Truncated("the stream is shorter than its header")
        if len(self._buffer) < TAG_BYTES:
            raise Truncated(
                f"the stream ends after chunk {self._index - 1} without its final chunk"
            )
        if len(self._buffer) == self._sealed_size:
            # A full chunk at the end: either the stream was cut at a chunk boundary, or its
            # final (short) chunk was replaced. Opening it as non-final tells which.
            self._open(bytes(self._buffer), final=False)
            raise Truncated(
                f"the stream ends after chunk {self._index - 1} without its final chunk"
            )
        return self._open(bytes(self._buffer), final=True)

    def _open(self, sealed: bytes | memoryview, *, final: bool) -> bytes:
        assert self._header is not None
        nonce, aad = _nonce_and_aad(self._header, self._index, final)
        try:
            plaintext = self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise ChunkRejected(
                f"chunk {self._index} failed authentication: the data was altered, reordered "
                "or cut, or the key is wrong"
            ) from None
        self._index += 1
        return plaintext
