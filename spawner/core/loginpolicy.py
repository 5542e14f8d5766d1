"""Login policy decisions, pure: password rules, where an insecure login may listen, TLS files.

No JupyterHub and no Docker import; ``spawner.nativeauth`` and ``jupyterhub_config.py`` turn
the sentences returned here into refused sign-ups and start-up errors.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Container
from urllib.parse import urlsplit

# bcrypt (NativeAuthenticator's hash) reads at most 72 bytes; bcrypt 5 raises on longer input.
BCRYPT_MAX_BYTES = 72
# NativeAuthenticator stores names in a String(128) column; JupyterHub's own is 255.
MAX_USERNAME_LENGTH = 128
# Authenticators that let anyone in under any name.
INSECURE_AUTHENTICATORS = frozenset(
    {"dummy", "jupyterhub.auth.DummyAuthenticator", "null", "jupyterhub.auth.NullAuthenticator"}
)


def password_problem(password: str, *, minimum_length: int, common: Container[str]) -> str | None:
    """Why ``password`` may not be set, as a sentence; None when it may."""
    if len(password) < minimum_length:
        return f"a password needs at least {minimum_length} characters"
    if len(password.encode("utf-8", "surrogatepass")) > BCRYPT_MAX_BYTES:
        return f"a password may have at most {BCRYPT_MAX_BYTES} bytes (UTF-8)"
    if password in common or password.lower() in common:
        return "that password is on the list of common passwords; choose another"
    return None


def username_problem(username: str) -> str | None:
    """Why a sign-up name is refused before NativeAuthenticator's own checks, or None."""
    if not username.strip():
        return "fill in a user name"
    if len(username) > MAX_USERNAME_LENGTH:
        return f"a user name may have at most {MAX_USERNAME_LENGTH} characters"
    return None


def is_loopback_bind(bind_url: str) -> bool:
    """Whether JupyterHub's ``bind_url`` listens on this machine only.

    An empty host (``http://:8000``) is every interface; a Unix socket is local.
    """
    parts = urlsplit(bind_url)
    if parts.scheme.endswith("+unix"):
        return True
    host = (parts.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_login_problem(authenticator: str, bind_url: str, *, allowed: bool) -> str | None:
    """Why the hub must not start with ``authenticator`` on ``bind_url``, or None."""
    if authenticator not in INSECURE_AUTHENTICATORS or allowed or is_loopback_bind(bind_url):
        return None
    return (
        f"GPUWS_AUTHENTICATOR={authenticator} lets anyone log in under any name (admins too), "
        f"and the hub would listen on {bind_url!r}, which is not a loopback address. "
        "Use the default login (native), bind to 127.0.0.1 (GPUWS_BIND_URL), or set "
        "GPUWS_ALLOW_INSECURE_LOGIN=1 if every client that can reach the port may be anyone "
        "(e.g. a compose demo with HUB_BIND=127.0.0.1)."
    )


def tls_problem(
    cert: str, key: str, *, readable: Callable[[str], bool] = lambda p: os.access(p, os.R_OK)
) -> str | None:
    """Why the certificate/key pair cannot be served, or None (both empty: plain HTTP)."""
    if bool(cert) != bool(key):
        missing = "GPUWS_SSL_KEY" if cert else "GPUWS_SSL_CERT"
        return f"GPUWS_SSL_CERT and GPUWS_SSL_KEY go together; {missing} is not set"
    for name, path in (("GPUWS_SSL_CERT", cert), ("GPUWS_SSL_KEY", key)):
        if path and not readable(path):
            return (
                f"{name}={path!r}: no readable file there (in compose: a path inside the hub "
                "container, under the folder GPUWS_TLS_DIR mounts at /srv/jupyterhub/tls)"
            )
    return None


def https_bind_url(bind_url: str) -> str:
    """``bind_url`` with the https scheme (JupyterHub serves TLS on it when given a pair)."""
    scheme, sep, rest = bind_url.partition("://")
    return f"https://{rest}" if sep and scheme == "http" else bind_url
