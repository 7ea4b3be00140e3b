"""The S3 client without MinIO's admin client.

`minio`'s `__init__` imports `minio.minioadmin`, the client of MinIO's own admin API, and
with it argon2-cffi, pycryptodome and cffi's C parser for that API's encrypted payloads.
Vauban speaks S3 and never calls it, yet every backup Job paid its import at start-up.
"""

from __future__ import annotations

import sys
import types


def skip_admin_client() -> bool:
    """Make `minio.minioadmin` an empty module, so `import minio` leaves the admin client
    and its cryptography out. Call it before anything imports `minio`; a process where one
    already did keeps the whole library. Whether it applied."""
    if "minio" in sys.modules:
        return False
    admin = types.ModuleType("minio.minioadmin", "Left out by vauban.backup.slim.")
    admin.MinioAdmin = None  # type: ignore[attr-defined]  # the one name minio's __init__ takes
    sys.modules["minio.minioadmin"] = admin
    return True
