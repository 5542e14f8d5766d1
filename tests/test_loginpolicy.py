"""The login policy's pure decisions (spawner/core/loginpolicy.py), as tables (no engine)."""

from __future__ import annotations

import pytest

from spawner.core.loginpolicy import (
    https_bind_url,
    insecure_login_problem,
    is_loopback_bind,
    password_problem,
    tls_problem,
    username_problem,
)

COMMON = {"password", "12345678", "qwertyuiop"}


@pytest.mark.parametrize(
    "password, problem",
    [
        ("correct horse battery", None),
        ("é" * 36, None),  # 72 bytes: what bcrypt still reads
        ("short", "at least 8 characters"),
        ("password", "common passwords"),
        ("PASSWORD", "common passwords"),
        ("12345678", "common passwords"),
        ("x" * 73, "at most 72 bytes"),
        ("é" * 37, "at most 72 bytes"),
    ],
)
def test_password_rules(password, problem):
    found = password_problem(password, minimum_length=8, common=COMMON)
    assert (found is None) if problem is None else (problem in str(found)), found


@pytest.mark.parametrize(
    "name, problem",
    [("alice", None), ("", "fill in"), ("   ", "fill in"), ("a" * 129, "at most 128")],
)
def test_username_rules(name, problem):
    found = username_problem(name)
    assert (found is None) if problem is None else (problem in str(found)), found


@pytest.mark.parametrize(
    "bind_url, loopback",
    [
        ("http://127.0.0.1:8000", True),
        ("http://127.1.2.3:8000", True),
        ("http://[::1]:8000", True),
        ("http://localhost:8000", True),
        ("http+unix://%2Frun%2Fhub.sock", True),
        ("http://:8000", False),
        ("http://0.0.0.0:8000", False),
        ("http://[::]:8000", False),
        ("http://10.0.0.5:8000", False),
        ("http://hub.example.org:8000", False),
    ],
)
def test_loopback_binds(bind_url, loopback):
    assert is_loopback_bind(bind_url) is loopback


@pytest.mark.parametrize(
    "authenticator, bind_url, allowed, refused",
    [
        ("dummy", "http://:8000", False, True),
        ("jupyterhub.auth.DummyAuthenticator", "http://0.0.0.0:8000", False, True),
        ("dummy", "http://:8000", True, False),
        ("dummy", "http://127.0.0.1:8000", False, False),
        ("native", "http://:8000", False, False),
        ("github", "http://:8000", False, False),
    ],
)
def test_insecure_login_only_on_loopback_or_when_allowed(authenticator, bind_url, allowed, refused):
    problem = insecure_login_problem(authenticator, bind_url, allowed=allowed)
    assert (problem is not None) is refused
    if refused:
        assert "GPUWS_ALLOW_INSECURE_LOGIN" in str(problem) and bind_url in str(problem)


@pytest.mark.parametrize(
    "cert, key, names",
    [
        ("", "", None),
        ("/tls/c.pem", "/tls/k.pem", None),
        ("/tls/c.pem", "", "GPUWS_SSL_KEY"),
        ("", "/tls/k.pem", "GPUWS_SSL_CERT"),
        ("/missing/c.pem", "/tls/k.pem", "GPUWS_SSL_CERT='/missing/c.pem'"),
        ("/tls/c.pem", "/missing/k.pem", "GPUWS_SSL_KEY='/missing/k.pem'"),
    ],
)
def test_tls_pair(cert, key, names):
    problem = tls_problem(cert, key, readable=lambda path: path.startswith("/tls/"))
    assert (problem is None) if names is None else (names in str(problem)), problem


@pytest.mark.parametrize(
    "given, served",
    [
        ("http://:8000", "https://:8000"),
        ("https://:8000", "https://:8000"),
        ("http://127.0.0.1:9", "https://127.0.0.1:9"),
        ("http+unix://%2Fs", "http+unix://%2Fs"),
    ],
)
def test_https_bind_url(given, served):
    assert https_bind_url(given) == served
