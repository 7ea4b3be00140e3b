"""The recovery key's envelope and the key record: what opens with what, and what is refused."""

from __future__ import annotations

import pytest

from vauban.backup import recovery as documents
from vauban.crypto import envelope, recovery
from vauban.settings import Settings


def test_sealed_opens_only_with_the_private_half_and_the_same_context() -> None:
    private, public = recovery.generate()
    other_private, _ = recovery.generate()
    secret = envelope.generate_key()
    sealed = recovery.seal(recovery.public_key(public), secret, b"cluster-a/v1")
    assert recovery.open_sealed(recovery.private_key(private), sealed, b"cluster-a/v1") == secret
    with pytest.raises(recovery.NotSealedToThisKey, match="another recovery key"):
        recovery.open_sealed(recovery.private_key(other_private), sealed, b"cluster-a/v1")
    with pytest.raises(recovery.NotSealedToThisKey):
        recovery.open_sealed(recovery.private_key(private), sealed, b"cluster-b/v1")
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(recovery.NotSealedToThisKey):
        recovery.open_sealed(recovery.private_key(private), tampered, b"cluster-a/v1")
    # Each sealing has its own ephemeral key: the same secret never seals to the same bytes.
    assert recovery.seal(recovery.public_key(public), secret, b"x") != recovery.seal(
        recovery.public_key(public), secret, b"x"
    )


def test_keys_are_typed_text_never_shown_in_errors() -> None:
    private, public = recovery.generate()
    with pytest.raises(recovery.InvalidRecoveryKey) as found:
        recovery.public_key(private)
    assert private.split(":")[1] not in str(found.value)
    with pytest.raises(recovery.InvalidRecoveryKey):
        recovery.private_key(public)
    with pytest.raises(recovery.InvalidRecoveryKey, match="32 bytes"):
        recovery.public_key(recovery.PUBLIC_PREFIX + "AAAA")
    assert len(recovery.fingerprint(recovery.public_key(public))) == 32


def test_the_operator_refuses_a_malformed_recovery_key(monkeypatch: pytest.MonkeyPatch) -> None:
    private, public = recovery.generate()
    monkeypatch.setenv("VAUBAN_RECOVERY_PUBLIC_KEY", public)
    assert Settings().recovery_public_key == public
    monkeypatch.setenv("VAUBAN_RECOVERY_PUBLIC_KEY", private)
    with pytest.raises(ValueError, match="recovery public key"):
        Settings()


def record() -> documents.KeyRecord:
    return documents.KeyRecord(
        cluster=documents.Identity(namespace="team", name="main", uid="c-uid"),
        database=documents.Identity(namespace="team", name="shop", uid="d-uid"),
        data_key_id="dek-d-uid",
        wrapped_data_key=b"\x01" * 61,
        kek=documents.KekReference(provider="kubernetes-secret", id="vauban-kek-c-uid", version=2),
    )


def test_key_record_authenticates_every_field_with_the_data_key() -> None:
    key = envelope.generate_key()
    sealed = record().sealed(key)
    again = documents.KeyRecord.model_validate_json(sealed.to_json())
    again.authenticate(key)
    with pytest.raises(documents.RecordNotAuthentic):
        again.authenticate(envelope.generate_key())
    moved = again.model_copy(
        update={"database": documents.Identity(namespace="other", name="shop", uid="d-uid")}
    )
    with pytest.raises(documents.RecordNotAuthentic, match="altered"):
        moved.authenticate(key)
    with pytest.raises(documents.RecordNotAuthentic):
        record().authenticate(key)


def test_where_the_documents_live() -> None:
    assert documents.key_record_key("/vauban/team/shop/d-uid/") == "vauban/team/shop/d-uid/key.json"
    assert documents.escrow_key("vauban", "c-uid", 3) == "vauban/_recovery/c-uid/kek-v3.json"
    assert documents.escrow_key("", "c-uid", 1) == "_recovery/c-uid/kek-v1.json"
