"""The `kmip` key provider against a real KMIP server (PyKMIP's) on 127.0.0.1, over mutual TLS.

The server does the cryptography: these tests check what the provider sends it and what it
makes of the answers, including the failures an operator must tell apart (wrong key or
context, a destroyed KEK, an unreachable or untrusted server)."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vauban.devcluster.kmip import KmipServer, create_pki
from vauban.kms import KeyProvider, KeyProviderError, WrongKey
from vauban.kms.kmip import KekNotFound, KmipProvider

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "vauban"

CONTEXT = b"vauban.dev/database:uid-1234"


def provider_for(server: KmipServer, *, timeout: int = 5, ca: Path | None = None) -> KmipProvider:
    return KmipProvider(
        server.host,
        server.port,
        cert_file=server.cert_file,
        key_file=server.key_file,
        ca_file=ca or server.ca_file,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def server() -> Iterator[KmipServer]:
    with KmipServer() as running:
        yield running


@pytest.fixture(scope="module")
def kms(server: KmipServer) -> KmipProvider:
    return provider_for(server)


@pytest.fixture(scope="module")
def kek(kms: KmipProvider) -> str:
    return kms.create_kek("vauban-kek-test-v1")


def test_is_a_key_provider(kms: KmipProvider) -> None:
    provider: KeyProvider = kms
    assert provider.name == "kmip"


def test_round_trip_and_the_reference_is_an_identifier(kms: KmipProvider, kek: str) -> None:
    data_key = os.urandom(32)
    wrapped = kms.wrap(kek, data_key, CONTEXT)
    assert data_key not in wrapped
    assert kms.unwrap(kek, wrapped, CONTEXT) == data_key
    # The server generates a fresh IV each time: wrapping twice gives two different values.
    again = kms.wrap(kek, data_key, CONTEXT)
    assert again != wrapped
    assert kms.unwrap(kek, again, CONTEXT) == data_key
    # What is recorded for the KEK is the key manager's identifier, far too short to be key
    # material, and the key carries its label there.
    assert len(kek.encode()) < 32
    with kms._client() as client:
        _, attributes = client.get_attributes(kek, ["Name"])
    names = [a.attribute_value.name_value.value for a in attributes]
    assert names == ["vauban-kek-test-v1"]


def test_another_context_does_not_open(kms: KmipProvider, kek: str) -> None:
    wrapped = kms.wrap(kek, os.urandom(32), CONTEXT)
    with pytest.raises(WrongKey):
        kms.unwrap(kek, wrapped, b"vauban.dev/database:uid-5678")
    with pytest.raises(WrongKey):
        kms.unwrap(kek, wrapped, b"")


def test_another_kek_does_not_open(kms: KmipProvider, kek: str) -> None:
    other = kms.create_kek("vauban-kek-test-v2")
    assert other != kek
    wrapped = kms.wrap(kek, os.urandom(32), CONTEXT)
    with pytest.raises(WrongKey, match="wrapped under KEK"):
        kms.unwrap(other, wrapped, CONTEXT)
    # Relabelling the blob with the other KEK's id gets past the local check, so the server
    # tries the other key: its tag check refuses (the id is also in the additional data).
    relabelled = _relabel(wrapped, kek, other)
    with pytest.raises(WrongKey, match="does not open"):
        kms.unwrap(other, relabelled, CONTEXT)


def test_altered_or_foreign_values_do_not_open(kms: KmipProvider, kek: str) -> None:
    wrapped = kms.wrap(kek, os.urandom(32), CONTEXT)
    flipped = bytearray(wrapped)
    flipped[-1] ^= 1
    truncated_tag = _with_short_tag(wrapped, kek)
    for bad in (bytes(flipped), truncated_tag, wrapped[:-1], b"", b"\x02" + wrapped[1:]):
        with pytest.raises(WrongKey):
            kms.unwrap(kek, bad, CONTEXT)
    with pytest.raises(ValueError, match="32 bytes"):
        kms.wrap(kek, b"short", CONTEXT)


def test_destroyed_kek_fails_clearly_and_destroy_is_idempotent(kms: KmipProvider) -> None:
    doomed = kms.create_kek("vauban-kek-test-doomed")
    wrapped = kms.wrap(doomed, os.urandom(32), CONTEXT)
    kms.destroy_kek(doomed)
    with pytest.raises(KekNotFound, match=f"no KEK {doomed}: destroyed"):
        kms.unwrap(doomed, wrapped, CONTEXT)
    with pytest.raises(KekNotFound):
        kms.wrap(doomed, os.urandom(32), CONTEXT)
    kms.destroy_kek(doomed)  # a retried deletion


def test_untrusted_server_is_refused(server: KmipServer, tmp_path: Path) -> None:
    other_ca = create_pki(tmp_path / "other").ca_cert
    with pytest.raises(KeyProviderError, match="TLS failed: CERTIFICATE_VERIFY_FAILED"):
        provider_for(server, ca=other_ca).create_kek("never")


def test_missing_certificate_is_a_configuration_error(server: KmipServer, tmp_path: Path) -> None:
    with pytest.raises(KeyProviderError, match="cannot load"):
        KmipProvider(
            server.host, server.port, tmp_path / "nope.crt", server.key_file, server.ca_file
        )


def test_unreachable_server_fails_within_seconds() -> None:
    with KmipServer() as lone:
        kms = provider_for(lone, timeout=1)
        kek = kms.create_kek("vauban-kek-test-lone")
        wrapped = kms.wrap(kek, os.urandom(32), CONTEXT)

        # A server that accepts connections but never answers (stopped, not dead): the
        # handshake times out.
        assert lone.process is not None
        os.killpg(lone.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(KeyProviderError, match="unreachable: timed out"):
                kms.unwrap(kek, wrapped, CONTEXT)
            assert time.monotonic() - started < 4
        finally:
            os.killpg(lone.process.pid, signal.SIGCONT)

        # A server that is gone: refused at once.
        lone.stop()
        started = time.monotonic()
        with pytest.raises(KeyProviderError, match=f"{lone.host}:{lone.port}: unreachable"):
            kms.unwrap(kek, wrapped, CONTEXT)
        assert time.monotonic() - started < 2


def _split(wrapped: bytes, kek: str) -> tuple[bytes, bytes, bytes, bytes]:
    """(header, IV, tag, ciphertext) of a format-1 value, per the module's docstring."""
    at = 3 + len(kek.encode())
    iv_len = wrapped[at]
    iv = wrapped[at + 1 : at + 1 + iv_len]
    at += 1 + iv_len
    tag_len = wrapped[at]
    return (
        wrapped[: 3 + len(kek.encode())],
        iv,
        wrapped[at + 1 : at + 1 + tag_len],
        wrapped[at + 1 + tag_len :],
    )


def _relabel(wrapped: bytes, kek: str, other: str) -> bytes:
    _, iv, tag, ciphertext = _split(wrapped, kek)
    uid = other.encode()
    header = b"\x01" + len(uid).to_bytes(2, "big") + uid
    return header + bytes([len(iv)]) + iv + bytes([len(tag)]) + tag + ciphertext


def _with_short_tag(wrapped: bytes, kek: str) -> bytes:
    header, iv, tag, ciphertext = _split(wrapped, kek)
    return header + bytes([len(iv)]) + iv + bytes([4]) + tag[:4] + ciphertext


def test_pykmip_internals_are_used_in_one_module_only() -> None:
    """PyKMIP is unmaintained: its private and undocumented parts (the client's socket
    factory, its proxy, raw request payloads) are confined to `vauban.kms.pykmip_internals`,
    so a change of PyKMIP breaks one small module whose docstring says what it relies on."""
    internals = re.compile(
        r"kmip\.services\.kmip_client|KMIPProxy|_create_socket|send_request_payload"
        r"|kmip\.core\.messages|\bclient\.proxy\b"
    )
    confined = PACKAGE / "kms" / "pykmip_internals.py"
    assert internals.search(confined.read_text(encoding="utf-8"))
    for source in PACKAGE.rglob("*.py"):
        if source != confined:
            text = source.read_text(encoding="utf-8")
            assert not internals.search(text), f"{source} uses PyKMIP's internals"
