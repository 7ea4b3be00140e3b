"""The KeyProvider contract: the same cases against every provider the operator offers —
kubernetes-secret (wrapping done here), kmip (PyKMIP's server on 127.0.0.1) and pkcs11
(SoftHSM2 tokens of the suite). What the operator relies on is what is checked: a wrapped
data key opens only under its KEK, in its context, unaltered; KEK versions are independent;
calls may come from many threads at once; a destroyed KEK opens nothing again."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from vauban.devcluster.kmip import KmipServer
from vauban.devcluster.softhsm import SoftHsm
from vauban.kms import KeyProvider, KeyProviderError, WrongKey
from vauban.kms.local import SecretKeyProvider

CONTEXT = b"vauban.dev/database:uid-contract"
HSM_PROVIDERS = ["kmip", "pkcs11"]
PROVIDERS = ["kubernetes-secret", *HSM_PROVIDERS]


@pytest.fixture(scope="module")
def kmip_server() -> Iterator[KmipServer]:
    with KmipServer() as server:
        yield server


def make(name: str, request: pytest.FixtureRequest) -> KeyProvider:
    if name == "kubernetes-secret":
        return SecretKeyProvider()
    if name == "kmip":
        from vauban.kms.kmip import KmipProvider

        server: KmipServer = request.getfixturevalue("kmip_server")
        return KmipProvider(
            server.host, server.port, server.cert_file, server.key_file, server.ca_file
        )
    from vauban.kms.pkcs11 import Pkcs11Provider

    hsm: SoftHsm = request.getfixturevalue("softhsm")
    return Pkcs11Provider(hsm.module, "vauban", hsm.pin_file("vauban"))


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> KeyProvider:
    return make(request.param, request)


@pytest.fixture(params=HSM_PROVIDERS)
def hsm_provider(request: pytest.FixtureRequest) -> KeyProvider:
    return make(request.param, request)


def test_round_trip(provider: KeyProvider) -> None:
    kek = provider.create_kek("vauban-kek-contract-v1")
    data_key = os.urandom(32)
    wrapped = provider.wrap(kek, data_key, CONTEXT)
    assert data_key not in wrapped
    assert provider.unwrap(kek, wrapped, CONTEXT) == data_key
    again = provider.wrap(kek, data_key, CONTEXT)
    assert again != wrapped, "each wrap uses a fresh IV"
    assert provider.unwrap(kek, again, CONTEXT) == data_key
    with pytest.raises(ValueError):
        provider.wrap(kek, os.urandom(16), CONTEXT)


def test_another_context_does_not_open(provider: KeyProvider) -> None:
    kek = provider.create_kek("vauban-kek-contract-v1")
    wrapped = provider.wrap(kek, os.urandom(32), CONTEXT)
    for other in (b"vauban.dev/database:uid-other", b"", CONTEXT[:-1]):
        with pytest.raises(WrongKey):
            provider.unwrap(kek, wrapped, other)


def test_another_kek_does_not_open(provider: KeyProvider) -> None:
    kek, other = (provider.create_kek(f"vauban-kek-contract-v{v}") for v in (1, 2))
    assert kek != other
    wrapped = provider.wrap(kek, os.urandom(32), CONTEXT)
    with pytest.raises(WrongKey):
        provider.unwrap(other, wrapped, CONTEXT)


def test_every_altered_byte_and_every_truncation_is_refused(provider: KeyProvider) -> None:
    kek = provider.create_kek("vauban-kek-contract-v1")
    wrapped = provider.wrap(kek, os.urandom(32), CONTEXT)
    for i in range(len(wrapped)):
        altered = bytearray(wrapped)
        altered[i] ^= 0x80
        with pytest.raises(WrongKey):
            provider.unwrap(kek, bytes(altered), CONTEXT)
        with pytest.raises(WrongKey):
            provider.unwrap(kek, wrapped[:i], CONTEXT)
    with pytest.raises(WrongKey):
        provider.unwrap(kek, wrapped + b"\x00", CONTEXT)


def test_versions_are_independent(provider: KeyProvider) -> None:
    """Rotation: create_kek once per version; each version opens only what it wrapped."""
    refs = [provider.create_kek(f"vauban-kek-contract-rot-v{v}") for v in (1, 2, 3)]
    assert len(set(refs)) == 3
    keys = [os.urandom(32) for _ in refs]
    wrapped = [provider.wrap(ref, key, CONTEXT) for ref, key in zip(refs, keys, strict=True)]
    for i, blob in enumerate(wrapped):
        for j, ref in enumerate(refs):
            if i == j:
                assert provider.unwrap(ref, blob, CONTEXT) == keys[i]
            else:
                with pytest.raises(WrongKey):
                    provider.unwrap(ref, blob, CONTEXT)


def test_concurrent_calls_from_threads(provider: KeyProvider) -> None:
    kek = provider.create_kek("vauban-kek-contract-threads")

    def round_trip(i: int) -> bool:
        context = f"vauban.dev/database:uid-{i}".encode()
        data_key = os.urandom(32)
        return provider.unwrap(kek, provider.wrap(kek, data_key, context), context) == data_key

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(round_trip, range(32)))


def test_a_destroyed_kek_opens_nothing_again(hsm_provider: KeyProvider) -> None:
    """Crypto-shredding, where the provider holds the key. (kubernetes-secret's KEK is its
    reference: it is shredded by deleting the Secret that records it, not by the provider.)"""
    doomed = hsm_provider.create_kek("vauban-kek-contract-doomed")
    survivor = hsm_provider.create_kek("vauban-kek-contract-survivor")
    wrapped = hsm_provider.wrap(doomed, os.urandom(32), CONTEXT)
    kept_key = os.urandom(32)
    kept = hsm_provider.wrap(survivor, kept_key, CONTEXT)
    hsm_provider.destroy_kek(doomed)
    with pytest.raises(KeyProviderError, match="destroyed"):
        hsm_provider.unwrap(doomed, wrapped, CONTEXT)
    with pytest.raises(KeyProviderError):
        hsm_provider.wrap(doomed, os.urandom(32), CONTEXT)
    hsm_provider.destroy_kek(doomed)
    assert hsm_provider.unwrap(survivor, kept, CONTEXT) == kept_key
