"""Secret values out of a support bundle, two ways at once: every value of the namespace's
Secrets (as read by the person making the bundle) is replaced wherever it appears, and
anything shaped like a credential (a password-like field, `password=...` in a log line, the
password of a connection URI, a PEM private key) is replaced whether or not it was known.
A bundle is sent to people outside the team: when in doubt, a value goes."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "<redacted>"

# Field names whose value is a credential. `keyId`, `secretName`, `...SecretRef` name
# credentials without being one: they stay, a bundle without them explains nothing.
_SECRET_FIELD = re.compile(
    r"(?i)^(.*(password|passwd|passphrase|pwd|token|apikey|api_key|secretkey|secret_key|"
    r"secretaccesskey|privatekey|private_key|credential)s?|secret|dsn|uri|jdbc-uri|"
    r"fqdn-uri|fqdn-jdbc-uri|pgpass|\.pgpass)$"
)
_KEPT_FIELD = re.compile(r"(?i)(ref|name|id|path|file|key_?id|rotationtoken)$")

_TEXT_PATTERNS = (
    # key=value and key: value, quoted or not, for credential-like keys.
    re.compile(
        r"(?i)((?:password|passwd|passphrase|pwd|token|secret|api[_-]?key|access[_-]?key|"
        r"secretaccesskey|credentials?)[\"']?\s*[:=]\s*[\"']?)([^\s\"',;&}]+)"
    ),
    # user:password@ in a connection URI.
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)([^\s@/]+)(@)"),
    # Authorization headers.
    re.compile(r"(?i)(\b(?:bearer|basic)\s+)([A-Za-z0-9._~+/=-]{8,})"),
)
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)

# Shorter values (`true`, a port, `5432`) are everywhere in a bundle and rarely secret:
# replacing them would make the bundle unreadable without protecting anything.
MIN_KNOWN_LENGTH = 6


# Keys of a Secret whose values are not secret and that a bundle needs to be read: where
# the database is, who logs in, which object a Secret serves (the backup agent's Secret names
# its database, namespace and bucket). Every other key's value is scrubbed: deny by default.
_PUBLIC_SUFFIXES = (
    "username",
    "user",
    "host",
    "port",
    "dbname",
    "database",
    "name",
    "namespace",
    "uid",
    "bucket",
    "region",
    "endpoint",
    "prefix",
    "sslmode",
    "type",
    "provider",
    "datakeyid",
)


def public_key(key: str) -> bool:
    """Whether a Secret's key holds a value that is no credential (`VAUBAN_DATABASE_NAME`,
    `dbname`, `host`...)."""
    folded = key.lower().replace("_", "").replace("-", "").replace(".", "")
    return key == "ca.crt" or folded.endswith(_PUBLIC_SUFFIXES)


def known_values(secrets: Iterable[Mapping[str, str]]) -> list[str]:
    """The values to scrub from a bundle, decoded and as the apiserver encodes them."""
    values = [v for data in secrets for k, v in data.items() if not public_key(k)]
    return values + [base64.b64encode(v.encode()).decode() for v in values]


def _secret_field(name: str) -> bool:
    return bool(_SECRET_FIELD.match(name)) and not _KEPT_FIELD.search(name)


def scrub(text: str, known: Iterable[str]) -> str:
    """`text` with every known secret value and every credential-shaped substring replaced."""
    for value in sorted({v for v in known if len(v) >= MIN_KNOWN_LENGTH}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    text = _PEM.sub(REDACTED, text)
    for pattern in _TEXT_PATTERNS:
        text = pattern.sub(
            lambda m: m.group(1) + REDACTED + (m.group(3) if m.lastindex == 3 else ""),
            text,
        )
    return text


def redact(value: Any, known: Iterable[str]) -> Any:
    """A copy of a JSON-like value with credential fields emptied and every string scrubbed.
    A Secret's `data` and `stringData` go whole: its keys stay, so the bundle still says what
    the Secret holds."""
    known = list(known)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in ("data", "stringData") and value.get("kind") == "Secret":
                out[key] = dict.fromkeys(item or {}, REDACTED)
            elif _secret_field(str(key)) and isinstance(item, str | int | float):
                out[key] = REDACTED
            else:
                out[key] = redact(item, known)
        return out
    if isinstance(value, list):
        return [redact(item, known) for item in value]
    if isinstance(value, str):
        return scrub(value, known)
    return value
