"""The asynchronous Kubernetes client without the synchronous one it comes with.

`kubernetes.aio` lives inside the `kubernetes` package, whose `__init__` imports the whole
synchronous client (and with it requests, urllib3, oauthlib, google-auth, websocket, the
informers, the dynamic client); `kubernetes.aio`'s own `__init__` imports its dynamic client,
streams, watches and leader election. Vauban uses none of them: `kubernetes.aio.client` and
`kubernetes.aio.config` only. kopf imports the synchronous client too, if it is installed,
for the optional support of its models in `kopf.adopt` and its login through it; Vauban
calls neither (it logs kopf in with its own client's credentials). About 9 MiB of the
operator's memory at start, for nothing.
"""

from __future__ import annotations

import importlib.util
import sys


def skip_unused_clients() -> bool:
    """Make `kubernetes` and `kubernetes.aio` bare packages, their submodules imported only
    when named, and the synchronous `kubernetes.client` unavailable (kopf then leaves its
    models out, as when the library is absent). Call it before anything imports `kubernetes`
    or kopf; a process where one already did keeps the whole library. Whether it applied."""
    if "kubernetes" in sys.modules or "kopf" in sys.modules:
        return False
    top = importlib.util.find_spec("kubernetes")
    if top is None or top.submodule_search_locations is None:
        return False
    kubernetes = importlib.util.module_from_spec(top)  # its __init__ is not run
    sys.modules["kubernetes"] = kubernetes
    aio = importlib.util.find_spec("kubernetes.aio")
    if aio is None or aio.submodule_search_locations is None:
        del sys.modules["kubernetes"]  # not the layout this was written for: leave it whole
        return False
    sys.modules["kubernetes.aio"] = importlib.util.module_from_spec(aio)
    kubernetes.aio = sys.modules["kubernetes.aio"]  # type: ignore[attr-defined]
    sys.modules["kubernetes.client"] = None  # type: ignore[assignment]
    return True
