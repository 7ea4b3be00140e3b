"""Vauban's cryptography: key generation and wrapping (`envelope`) and the chunked,
authenticated encryption of backup streams (`stream`). Built on `cryptography`'s AES-GCM
only; nothing here knows about backups, buckets or Kubernetes."""
