"""The `pkcs11` key provider against a real PKCS#11 token: SoftHSM2, initialised by the suite
in a temporary folder (the `softhsm` fixture).

The token does the cryptography: these tests check what the provider asks of it, the key
objects it leaves there, and what it makes of the answers, including the failures an operator
must tell apart (wrong key or context, a destroyed KEK, a missing token, a wrong PIN, a module
that does not load)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pkcs11
import pytest
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

from vauban.api.cluster import ManagedClusterSpec
from vauban.conditions import Reason, State, Verdict
from vauban.devcluster.softhsm import SoftHsm
from vauban.handlers.context import Context
from vauban.handlers.keys import provider_of
from vauban.kms import KekNotFound, KeyProvider, KeyProviderError, WrongKey
from vauban.kms.pkcs11 import Pkcs11Provider
from vauban.main import key_providers
from vauban.reconcile import compliance
from vauban.reconcile.compliance import Facts
from vauban.settings import Settings

CONTEXT = b"vauban.dev/database:uid-1234"


@pytest.fixture(scope="module")
def kms(softhsm: SoftHsm) -> Pkcs11Provider:
    return Pkcs11Provider(softhsm.module, "vauban", softhsm.pin_file("vauban"))


@pytest.fixture(scope="module")
def kek(kms: Pkcs11Provider) -> str:
    return kms.create_kek("vauban-kek-test-v1")


@contextlib.contextmanager
def on_token(softhsm: SoftHsm, kms: Pkcs11Provider) -> Iterator[Any]:
    """A session of our own on the token, to look at what the provider left there. It holds
    the module's lock, as the provider does: no provider call may be made inside."""
    with kms._lock:
        lib = pkcs11.lib(kms.module)
        session = lib.get_token(token_label="vauban").open(user_pin=softhsm.pin("vauban"))
        try:
            yield session
        finally:
            session.close()


ATTRIBUTES = {
    Attribute.CLASS: ObjectClass.SECRET_KEY,
    Attribute.KEY_TYPE: pkcs11.KeyType.AES,
    Attribute.VALUE_LEN: 32,
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.ALWAYS_SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.NEVER_EXTRACTABLE: True,
    Attribute.MODIFIABLE: False,
    Attribute.COPYABLE: False,
    Attribute.ENCRYPT: True,
    Attribute.DECRYPT: True,
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.DERIVE: False,
}
"""What a KEK must be: stored on the token, private, sensitive and never extractable,
unchangeable, for encryption and decryption only."""


def key_attributes(softhsm: SoftHsm, kms: Pkcs11Provider, kek: str) -> list[dict[Any, Any]]:
    """The attributes of every key object whose CKA_ID is the reference `kek` (all but the
    value, which cannot be read)."""
    with on_token(softhsm, kms) as session:
        return [
            key.get_attributes(list(ATTRIBUTES))
            for key in session.get_objects({Attribute.ID: bytes.fromhex(kek)})
        ]


def test_is_a_key_provider(kms: Pkcs11Provider) -> None:
    provider: KeyProvider = kms
    assert provider.name == "pkcs11"


def test_round_trip(kms: Pkcs11Provider, kek: str) -> None:
    data_key = os.urandom(32)
    wrapped = kms.wrap(kek, data_key, CONTEXT)
    assert data_key not in wrapped
    assert kms.unwrap(kek, wrapped, CONTEXT) == data_key
    # A fresh IV from the token each time: wrapping twice gives two different values.
    again = kms.wrap(kek, data_key, CONTEXT)
    assert again != wrapped
    assert kms.unwrap(kek, again, CONTEXT) == data_key
    with pytest.raises(ValueError, match="32 bytes"):
        kms.wrap(kek, b"short", CONTEXT)


def test_the_kek_is_a_sensitive_token_object_named_by_its_id(
    softhsm: SoftHsm, kms: Pkcs11Provider, kek: str
) -> None:
    """What is recorded is the key object's CKA_ID, not material; the object is stored on the
    token, can encrypt and decrypt and nothing else, and its value cannot be read."""
    assert len(bytes.fromhex(kek)) == 16
    [attributes] = key_attributes(softhsm, kms, kek)
    assert attributes == ATTRIBUTES
    with on_token(softhsm, kms) as session:
        key = session.get_key(id=bytes.fromhex(kek))
        assert key.label == "vauban-kek-test-v1"
        with pytest.raises(p11.AttributeSensitive):
            key[Attribute.VALUE]


def test_another_context_does_not_open(kms: Pkcs11Provider, kek: str) -> None:
    wrapped = kms.wrap(kek, os.urandom(32), CONTEXT)
    for other in (b"vauban.dev/database:uid-5678", b"", CONTEXT + b"\x00"):
        with pytest.raises(WrongKey, match="does not open"):
            kms.unwrap(kek, wrapped, other)


def test_another_kek_does_not_open(kms: Pkcs11Provider, kek: str) -> None:
    other = kms.create_kek("vauban-kek-test-v2")
    assert other != kek
    wrapped = kms.wrap(kek, os.urandom(32), CONTEXT)
    with pytest.raises(WrongKey, match="wrapped under KEK"):
        kms.unwrap(other, wrapped, CONTEXT)
    # Relabelling the blob with the other KEK's reference gets past the local check, so the
    # token tries the other key: its tag check refuses (the reference is also in the AAD).
    relabelled = other.encode().join([wrapped[:3], wrapped[3 + len(kek) :]])
    with pytest.raises(WrongKey, match="does not open"):
        kms.unwrap(other, relabelled, CONTEXT)


def parts(wrapped: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    ref_end = 3 + int.from_bytes(wrapped[1:3], "big")
    header, rest = wrapped[:ref_end], wrapped[ref_end:]
    iv, rest = rest[1 : 1 + rest[0]], rest[1 + rest[0] :]
    tag, ciphertext = rest[1 : 1 + rest[0]], rest[1 + rest[0] :]
    return header, iv, tag, ciphertext


def test_every_altered_byte_and_foreign_value_is_refused(kms: Pkcs11Provider, kek: str) -> None:
    wrapped = kms.wrap(kek, os.urandom(32), CONTEXT)
    for i in range(len(wrapped)):
        altered = bytearray(wrapped)
        altered[i] ^= 0x01
        with pytest.raises(WrongKey):
            kms.unwrap(kek, bytes(altered), CONTEXT)
    header, iv, tag, ciphertext = parts(wrapped)
    short_iv = header + bytes([8]) + iv[:8] + bytes([16]) + tag + ciphertext
    for bad in (wrapped[:-1], wrapped + b"\x00", b"", b"\x02" + wrapped[1:], short_iv):
        with pytest.raises(WrongKey):
            kms.unwrap(kek, bad, CONTEXT)


def test_a_truncated_tag_is_refused_although_the_token_would_accept_it(
    softhsm: SoftHsm, kms: Pkcs11Provider, kek: str
) -> None:
    """SoftHSM2 checks a tag of whatever length it is told: a blob whose tag was cut to 4
    bytes would be checked on 32 bits. The provider refuses any tag but 16 bytes."""
    data_key = os.urandom(32)
    wrapped = kms.wrap(kek, data_key, CONTEXT)
    header, iv, tag, ciphertext = parts(wrapped)
    assert (len(iv), len(tag), len(ciphertext)) == (12, 16, 32)
    truncated = header + bytes([12]) + iv + bytes([4]) + tag[:4] + ciphertext
    with pytest.raises(WrongKey, match="not a data key wrapped by the pkcs11 provider"):
        kms.unwrap(kek, truncated, CONTEXT)
    # Why: asked to check 32 bits, the token opens it.
    aad = b"vauban-pkcs11-wrap\x00" + header + CONTEXT
    with on_token(softhsm, kms) as session:
        opened = session.get_key(id=bytes.fromhex(kek)).decrypt(
            ciphertext + tag[:4],
            mechanism=Mechanism.AES_GCM,
            mechanism_param=GCMParams(iv, aad, 32),
        )
    assert opened == data_key


def test_destroyed_kek_fails_clearly_and_destroy_is_idempotent(
    softhsm: SoftHsm, kms: Pkcs11Provider
) -> None:
    """Crypto-shredding: the key object is gone from the token, and what it wrapped can no
    longer be opened by anyone."""
    doomed = kms.create_kek("vauban-kek-test-doomed")
    wrapped = kms.wrap(doomed, os.urandom(32), CONTEXT)
    assert len(key_attributes(softhsm, kms, doomed)) == 1
    kms.destroy_kek(doomed)
    assert key_attributes(softhsm, kms, doomed) == []
    with pytest.raises(KekNotFound, match=f"no KEK {doomed}: destroyed"):
        kms.unwrap(doomed, wrapped, CONTEXT)
    with pytest.raises(KekNotFound):
        kms.wrap(doomed, os.urandom(32), CONTEXT)
    kms.destroy_kek(doomed)  # a retried deletion


def test_versions_are_separate_key_objects(softhsm: SoftHsm, kms: Pkcs11Provider) -> None:
    """Rotation: one key object per version, each with its own label; a data key opens only
    under the version that wrapped it, and destroying one version leaves the others."""
    refs = {v: kms.create_kek(f"vauban-kek-test-rot-v{v}") for v in (1, 2, 3)}
    assert len(set(refs.values())) == 3
    keys = {v: os.urandom(32) for v in refs}
    wrapped = {v: kms.wrap(refs[v], keys[v], CONTEXT) for v in refs}
    for v, blob in wrapped.items():
        assert kms.unwrap(refs[v], blob, CONTEXT) == keys[v]
        for other in set(refs) - {v}:
            with pytest.raises(WrongKey):
                kms.unwrap(refs[other], blob, CONTEXT)
    with on_token(softhsm, kms) as session:
        labels = {v: session.get_key(id=bytes.fromhex(ref)).label for v, ref in refs.items()}
    assert labels == {v: f"vauban-kek-test-rot-v{v}" for v in refs}
    kms.destroy_kek(refs[1])
    with pytest.raises(KekNotFound):
        kms.unwrap(refs[1], wrapped[1], CONTEXT)
    assert kms.unwrap(refs[2], wrapped[2], CONTEXT) == keys[2]
    assert kms.unwrap(refs[3], wrapped[3], CONTEXT) == keys[3]


def test_calls_from_many_threads_are_serialised(kms: Pkcs11Provider, kek: str) -> None:
    """The operator calls providers from threads. Every call into the module holds the
    module's lock (python-pkcs11 initialises it without PKCS#11's locking): no two threads are
    ever inside the token at once, and every concurrent round trip comes back whole."""
    inside, most = 0, 0
    count = threading.Lock()
    real_lock = kms._lock

    class Watched:
        def __enter__(self) -> None:
            nonlocal inside, most
            real_lock.acquire()
            with count:
                inside += 1
                most = max(most, inside)

        def __exit__(self, *_: object) -> None:
            nonlocal inside
            with count:
                inside -= 1
            real_lock.release()

    kms._lock = cast(threading.Lock, Watched())
    try:

        def round_trip(i: int) -> bool:
            context = f"vauban.dev/database:uid-{i}".encode()
            data_key = os.urandom(32)
            return kms.unwrap(kek, kms.wrap(kek, data_key, context), context) == data_key

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(round_trip, range(64)))
    finally:
        kms._lock = real_lock
    assert results == [True] * 64
    assert most == 1


def test_providers_of_one_module_share_its_lock_and_not_their_keys(
    kms: Pkcs11Provider, kek: str, softhsm: SoftHsm
) -> None:
    other = Pkcs11Provider(softhsm.module, "vauban-other", softhsm.pin_file("vauban-other"))
    assert other._lock is kms._lock
    wrapped = kms.wrap(kek, os.urandom(32), CONTEXT)
    with pytest.raises(KekNotFound, match="created on another token"):
        other.unwrap(kek, wrapped, CONTEXT)
    mine = other.create_kek("vauban-kek-other-v1")
    with pytest.raises(KekNotFound):
        kms.wrap(mine, os.urandom(32), CONTEXT)


def test_a_reference_of_another_provider_is_refused(kms: Pkcs11Provider) -> None:
    for ref in ("4127", "vauban-kek-test-v1", "AB" * 16, "ab" * 17):
        with pytest.raises(KeyProviderError, match="not a KEK reference of the pkcs11"):
            kms.wrap(ref, os.urandom(32), CONTEXT)


# -- misconfiguration ------------------------------------------------------------------------


def test_a_module_that_does_not_load_is_refused(softhsm: SoftHsm, tmp_path: Path) -> None:
    pin = softhsm.pin_file("vauban")
    with pytest.raises(KeyProviderError, match=r"cannot load the PKCS#11 module .*nope\.so"):
        Pkcs11Provider(tmp_path / "nope.so", "vauban", pin)
    # A shared library that is not a PKCS#11 module (python-pkcs11's own extension).
    not_a_module = Path(pkcs11._pkcs11.__file__)
    with pytest.raises(KeyProviderError, match="C_GetFunctionList"):
        Pkcs11Provider(not_a_module, "vauban", pin)


def test_an_unreadable_or_empty_pin_file_is_refused(softhsm: SoftHsm, tmp_path: Path) -> None:
    with pytest.raises(KeyProviderError, match=r"cannot read the PKCS#11 PIN file .*missing"):
        Pkcs11Provider(softhsm.module, "vauban", tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(KeyProviderError, match="is empty"):
        Pkcs11Provider(softhsm.module, "vauban", empty)


def test_a_missing_token_is_reported_per_call(softhsm: SoftHsm) -> None:
    away = Pkcs11Provider(softhsm.module, "not-plugged-in", softhsm.pin_file("vauban"))
    with pytest.raises(KeyProviderError, match="'not-plugged-in' is not present in the PKCS#11"):
        away.create_kek("never")


def test_a_wrong_pin_is_tried_once_and_never_shown(
    softhsm: SoftHsm, kms: Pkcs11Provider, kek: str, tmp_path: Path
) -> None:
    """Repeated wrong PINs lock a token: a refused PIN is not sent again until the file
    changes. No message carries a PIN, right or wrong."""
    pin_file = tmp_path / "pin"
    wrong = "000000-" + softhsm.pin("vauban")[:4]
    pin_file.write_text(wrong + "\n", encoding="utf-8")
    provider = Pkcs11Provider(softhsm.module, "vauban", pin_file)
    wrapped = kms.wrap(kek, os.urandom(32), CONTEXT)
    messages = []
    with pytest.raises(KeyProviderError, match=r"refused the PIN in .*pin \(wrong PIN\)") as e:
        provider.unwrap(kek, wrapped, CONTEXT)
    messages.append(str(e.value))
    with pytest.raises(KeyProviderError, match="before; it is not tried again") as e:
        provider.unwrap(kek, wrapped, CONTEXT)
    messages.append(str(e.value))
    # Another wrong PIN in the file: tried (once).
    pin_file.write_text(wrong + "1", encoding="utf-8")
    with pytest.raises(KeyProviderError, match=r"\(wrong PIN\)") as e:
        provider.unwrap(kek, wrapped, CONTEXT)
    messages.append(str(e.value))
    # The Secret is corrected: the same provider works at once.
    pin_file.write_text(softhsm.pin("vauban"), encoding="utf-8")
    assert len(provider.unwrap(kek, wrapped, CONTEXT)) == 32
    for message in messages:
        assert softhsm.pin("vauban") not in message and wrong not in message


# -- the operator's configuration ------------------------------------------------------------


def settings(**values: Any) -> Settings:
    return Settings(**values)


def test_the_operator_offers_pkcs11_when_configured(softhsm: SoftHsm) -> None:
    providers = key_providers(
        settings(
            pkcs11_module=softhsm.module,
            pkcs11_token_label="vauban",
            pkcs11_pin_file=softhsm.pin_file("vauban"),
        )
    )
    assert set(providers) == {"kubernetes-secret", "pkcs11"}
    assert isinstance(providers["pkcs11"], Pkcs11Provider)


@pytest.mark.parametrize(
    ("values", "missing"),
    [
        ({"pkcs11_module": "/m.so"}, "VAUBAN_PKCS11_TOKEN_LABEL and VAUBAN_PKCS11_PIN_FILE"),
        ({"pkcs11_module": "/m.so", "pkcs11_token_label": "t"}, "VAUBAN_PKCS11_PIN_FILE"),
        ({"pkcs11_token_label": "t", "pkcs11_pin_file": "/p"}, "VAUBAN_PKCS11_MODULE"),
    ],
)
def test_a_half_configured_pkcs11_refuses_to_start(values: dict[str, str], missing: str) -> None:
    with pytest.raises(SystemExit, match=f"needs {missing}"):
        key_providers(settings(**values))


def test_a_broken_pkcs11_configuration_refuses_to_start(softhsm: SoftHsm, tmp_path: Path) -> None:
    with pytest.raises(
        SystemExit, match="a key provider cannot start: cannot load the PKCS#11 module"
    ):
        key_providers(
            settings(
                pkcs11_module=tmp_path / "vendor.so",
                pkcs11_token_label="vauban",
                pkcs11_pin_file=softhsm.pin_file("vauban"),
            )
        )


def test_a_cluster_asking_for_an_unconfigured_provider_is_told_so() -> None:
    ctx = cast(Context, SimpleNamespace(key_providers=key_providers(settings())))
    verdict = provider_of(ctx, "pkcs11")
    assert isinstance(verdict, Verdict)
    assert (verdict.state, verdict.reason) == (State.STALLED, Reason.KEY_PROVIDER_UNAVAILABLE)
    assert "key provider pkcs11 is not configured on this operator" in verdict.message


def test_clusters_may_ask_for_pkcs11() -> None:
    spec = ManagedClusterSpec.model_validate(
        {"version": "17", "storage": {"size": "1Gi"}, "encryption": {"provider": "pkcs11"}}
    )
    assert spec.encryption.provider == "pkcs11"


def test_secnumcloud_counts_a_pkcs11_token_as_an_external_key_manager() -> None:
    spec = ManagedClusterSpec.model_validate(
        {
            "version": "17",
            "storage": {"size": "1Gi"},
            "encryption": {"provider": "pkcs11"},
            "compliance": {"profile": "secnumcloud"},
        }
    )
    results = {r.rule: r.met for r in compliance.assess(spec, Facts()).results}
    assert results["external-key-manager"]
