"""A fast reachability probe for model downloads (ELMo releases, TF Hub handles).

Downloaders (urllib, tensorflow_hub) retry or wait for minutes when offline; this answers
within seconds so callers can fail with a message that points at a local copy instead.
Standard library only.
"""

from __future__ import annotations

import concurrent.futures
import socket
import urllib.parse

#: seconds allowed to resolve and connect to a download host before calling it unreachable
CONNECT_TIMEOUT_S = 5.0


def unreachable_reason(url: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None if ``url``'s host accepts a TCP connection within ``timeout`` s, else why not."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if not host:
        return f"{url!r} has no host"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    # getaddrinfo has no timeout of its own and can hang on a dead resolver: run it aside.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        infos = pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        return f"host {host} could not be resolved within {timeout:g} s"
    except OSError as exc:
        return f"host {host} could not be resolved ({exc.strerror or exc})"
    finally:
        pool.shutdown(wait=False)
    last: OSError | None = None
    for family, kind, proto, _, addr in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(addr)
            return None
        except OSError as exc:
            last = exc
    return f"host {host} is unreachable ({last})"


__all__ = ["CONNECT_TIMEOUT_S", "unreachable_reason"]
