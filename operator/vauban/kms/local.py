"""The `kubernetes-secret` provider: the KEK's material is its reference, kept by the operator
in a Secret of its own namespace; wrapping is AES-256-GCM done here."""

from __future__ import annotations

import base64

from vauban.crypto import envelope
from vauban.kms import WrongKey


class SecretKeyProvider:
    name = "kubernetes-secret"

    def create_kek(self, label: str) -> str:
        return base64.b64encode(envelope.generate_key()).decode()

    def wrap(self, kek_ref: str, plaintext: bytes, context: bytes) -> bytes:
        return envelope.wrap_key(base64.b64decode(kek_ref), plaintext, context)

    def unwrap(self, kek_ref: str, wrapped: bytes, context: bytes) -> bytes:
        try:
            return envelope.unwrap_key(base64.b64decode(kek_ref), wrapped, context)
        except envelope.WrongKey as e:
            raise WrongKey(str(e)) from e

    def destroy_kek(self, kek_ref: str) -> None:
        """Nothing to do here: the material lives only in the Secret the caller deletes."""
