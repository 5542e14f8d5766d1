"""An outsider who knows only the hub's URL, against a real hub on the default login.

The admin accounts exist before the hub listens (GPUWS_ADMIN_PASSWORD or a generated initial
password in the state folder, mode 0600); signing up under an admin name is refused; guessed
passwords are refused and lock the account (the right password too) until the lockout ends;
weak passwords are refused at sign-up; the login and sign-up forms answer every input, fuzzed
with hypothesis, without a 5xx. Then the settings that refuse to start (the dummy login on a
non-loopback bind, a weak admin password, half a TLS pair), and HTTPS with a certificate made
here: Secure cookies, __Host- cookies, and Secure cookies behind a TLS proxy (X-Scheme).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import secrets
import stat
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certifi
import pytest
import requests
from harness import Hub, free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from native_auth import api_token, log_in, sign_up

pytestmark = pytest.mark.docker

LOCKOUT_S = 4
ATTEMPTS = 3
NATIVE = {
    "GPUWS_AUTHENTICATOR": "native",
    "GPUWS_LOGIN_ATTEMPTS": str(ATTEMPTS),
    "GPUWS_LOGIN_LOCKOUT_SECONDS": str(LOCKOUT_S),
}
GUESSES = ["admin", "password", "12345678", "jupyterhub", "admin123"]


def _login_status(url: str, username: str, password: str) -> tuple[int, str]:
    """The login form's answer: status and the message it shows (302: logged in)."""
    session = requests.Session()
    session.get(f"{url}/hub/login", timeout=30).raise_for_status()
    r = session.post(
        f"{url}/hub/login",
        data={"username": username, "password": password, "_xsrf": session.cookies["_xsrf"]},
        allow_redirects=False,
        timeout=30,
    )
    error = re.search(r'<p class="login_error">(.*?)</p>', r.text, re.S)
    return r.status_code, " ".join(error.group(1).split()) if error else ""


def _is_admin(url: str, name: str, password: str) -> bool:
    token = api_token(log_in(url, name, password), url, name)
    r = requests.get(f"{url}/hub/api/user", headers={"Authorization": f"token {token}"}, timeout=30)
    r.raise_for_status()
    return bool(r.json()["admin"])


def _change_password(url: str, session: requests.Session, old: str, new: str) -> str:
    page = session.get(f"{url}/hub/change-password", timeout=30)
    page.raise_for_status()
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    assert xsrf, page.text[:300]
    r = session.post(
        f"{url}/hub/change-password",
        data={
            "old_password": old,
            "new_password": new,
            "new_password_confirmation": new,
            "_xsrf": xsrf.group(1),
        },
        timeout=30,
    )
    r.raise_for_status()
    return r.text


def test_an_outsider_cannot_become_admin_and_guesses_lock_the_account(start_hub):
    hub = start_hub(env=NATIVE)
    state = hub.workdir / "state"
    password_file = state / "initial_admin_password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    initial = password_file.read_text().strip()
    assert len(initial) >= 20
    assert initial not in hub.log_path.read_text()

    # Sign-up under the admin name (any spelling the hub normalises to it) is refused.
    for name in ("admin", "Admin"):
        message = sign_up(hub.url, name, secrets.token_urlsafe(12))
        assert "belongs to an administrator" in message, message
    # A person signing up is never approved by the sign-up itself.
    outsider = secrets.token_urlsafe(12)
    assert "sent to the admin" in sign_up(hub.url, "mallory", outsider)
    assert _login_status(hub.url, "mallory", outsider)[0] == 403

    # Guessed passwords are refused; after ATTEMPTS failures the right one is refused too.
    for guess in GUESSES[: ATTEMPTS - 1]:
        assert _login_status(hub.url, "admin", guess) == (403, "Invalid username or password.")
    # The failure that locks the account already says so.
    status, message = _login_status(hub.url, "admin", GUESSES[ATTEMPTS - 1])
    last_failure = time.monotonic()
    assert status == 429 and f"try again in {LOCKOUT_S + 1} seconds" in message, message
    refused: list[tuple[int, str]] = []
    while True:
        status, message = _login_status(hub.url, "admin", initial)
        if status == 302:
            break
        refused.append((status, message))
        assert time.monotonic() - last_failure < LOCKOUT_S + 10, refused[-3:]
        time.sleep(0.5)
    locked_for = time.monotonic() - last_failure
    print(f"lockout: {len(refused)} refusals of the right password over {locked_for:.1f}s")
    assert refused and all(s == 429 and "Too many failed logins" in m for s, m in refused)
    assert locked_for >= LOCKOUT_S

    assert _is_admin(hub.url, "admin", initial)
    # The password file goes away once the admin has a password of their own.
    new = secrets.token_urlsafe(14)
    page = _change_password(hub.url, log_in(hub.url, "admin", initial), initial, new)
    assert "changed successfully" in page
    assert not password_file.exists()
    assert _login_status(hub.url, "admin", initial)[0] == 403
    assert _is_admin(hub.url, "admin", new)
    log = hub.log_path.read_text()
    assert initial not in log and new not in log and outsider not in log


def test_admin_password_from_the_environment_and_the_password_rules(start_hub):
    admin_password = secrets.token_urlsafe(12)
    hub = start_hub(
        env={**NATIVE, "GPUWS_ADMIN_USERS": "boss,chief", "GPUWS_ADMIN_PASSWORD": admin_password}
    )
    assert not (hub.workdir / "state" / "initial_admin_password").exists()
    assert _is_admin(hub.url, "boss", admin_password)
    assert _is_admin(hub.url, "chief", admin_password)
    # After a restart the accounts are kept as they are (the password applies on creation).
    hub.restart()
    assert _is_admin(hub.url, "boss", admin_password)

    refusals = {
        "password": "common passwords",
        "12345678": "common passwords",
        "Password": "common passwords",
        "short1": "at least 8 characters",
        "x" * 73: "at most 72 bytes",
        "é" * 40: "at most 72 bytes",
    }
    for n, (weak, reason) in enumerate(refusals.items()):
        message = sign_up(hub.url, f"weak{n}", weak)
        assert reason in message, (weak, message)
        assert _login_status(hub.url, f"weak{n}", weak)[0] == 403
    strong = secrets.token_urlsafe(12)
    assert "sent to the admin" in sign_up(hub.url, "carla", strong)
    status, message = _login_status(hub.url, "carla", strong)
    assert (status, message) == (403, "User carla has not been authorized by an administrator yet.")
    boss = log_in(hub.url, "boss", admin_password)
    boss.get(f"{hub.url}/hub/authorize/carla", timeout=30).raise_for_status()
    assert not _is_admin(hub.url, "carla", strong)
    assert admin_password not in hub.log_path.read_text()


# -- fuzzing the forms ----------------------------------------------------------------------

FIELDS = ["username", "password", "_xsrf", "next", "2fa", "email", "signup_password",
          "signup_password_confirmation"]  # fmt: skip
values = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=80),
    st.sampled_from(["admin", "ADMIN", " admin ", "", "\x00", "é" * 40, "a/../b", "%00"]),
    st.integers(1, 300_000).map(lambda n: "a" * n),
)
forms = st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=12)), values)


@dataclass
class Answers:
    statuses: dict[int, int]

    def add(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


def _post(session: requests.Session, url: str, form: dict[Any, Any], how: str, xsrf: bool):
    fields = dict(form)
    if xsrf:
        fields["_xsrf"] = session.cookies["_xsrf"]
    if how == "urlencoded":  # bytes values become %XX escapes: not always UTF-8
        body = urllib.parse.urlencode(list(fields.items())).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return session.post(url, data=body, headers=headers, allow_redirects=False, timeout=60)
    if how == "multipart":
        parts = {
            str(k): (None, v if isinstance(v, bytes) else str(v).encode(errors="surrogatepass"))
            for k, v in fields.items()
        }
        return session.post(url, files=parts or {"x": (None, b"")}, allow_redirects=False,
                            timeout=60)  # fmt: skip
    raw = b"&".join(
        (k.encode(errors="surrogatepass") if isinstance(k, str) else k)
        + b"="
        + (v if isinstance(v, bytes) else str(v).encode(errors="surrogatepass"))
        for k, v in fields.items()
    )
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return session.post(url, data=raw, headers=headers, allow_redirects=False, timeout=60)


def test_the_login_and_sign_up_forms_never_answer_5xx(start_hub):
    hub = start_hub(env={**NATIVE, "GPUWS_LOGIN_ATTEMPTS": "1000"})
    session = requests.Session()
    session.get(f"{hub.url}/hub/login", timeout=30).raise_for_status()
    answers = Answers({})

    # The input that was a 500 (KeyError) before: a login without a username.
    for form in ({"password": "x"}, {}, {"username": "admin"}):
        r = _post(session, f"{hub.url}/hub/login", form, "urlencoded", True)
        assert r.status_code == 403, (form, r.status_code)

    @settings(
        max_examples=250,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    @given(
        form=forms,
        page=st.sampled_from(["login", "login", "signup"]),
        how=st.sampled_from(["urlencoded", "multipart", "raw"]),
        xsrf=st.booleans(),
    )
    def one_post(form, page, how, xsrf):
        r = _post(session, f"{hub.url}/hub/{page}", form, how, xsrf)
        answers.add(r.status_code)
        assert r.status_code < 500, (page, how, form, r.status_code, r.text[:500])

    one_post()
    print(f"form fuzz answers: {json.dumps(answers.statuses, sort_keys=True)}")
    assert sum(answers.statuses.values()) >= 250
    log = hub.log_path.read_text(errors="replace")
    assert not re.search(r"\b5\d\d (POST|GET) /hub/(login|signup)", log)
    assert "Uncaught exception" not in log


# -- settings that refuse to start ------------------------------------------------------------


@pytest.mark.parametrize(
    "env, names, says",
    [
        (
            {"GPUWS_AUTHENTICATOR": "dummy", "GPUWS_BIND_URL": "http://0.0.0.0:8000"},
            "GPUWS_ALLOW_INSECURE_LOGIN",
            "not a loopback address",
        ),
        (
            {"GPUWS_AUTHENTICATOR": "dummy", "GPUWS_BIND_URL": "http://:8000"},
            "GPUWS_ALLOW_INSECURE_LOGIN",
            "lets anyone log in",
        ),
        ({**NATIVE, "GPUWS_ADMIN_PASSWORD": "password"}, "GPUWS_ADMIN_PASSWORD", "common"),
        ({**NATIVE, "GPUWS_ADMIN_PASSWORD": "short"}, "GPUWS_ADMIN_PASSWORD", "at least 8"),
        ({"GPUWS_SSL_CERT": "/etc/hostname"}, "GPUWS_SSL_KEY", "go together"),
        (
            {"GPUWS_SSL_CERT": "/nonexistent.pem", "GPUWS_SSL_KEY": "/etc/hostname"},
            "GPUWS_SSL_CERT",
            "no readable file",
        ),
        ({**NATIVE, "GPUWS_LOGIN_ATTEMPTS": "0"}, "GPUWS_LOGIN_ATTEMPTS", ">= 1"),
    ],
)
def test_unsafe_login_settings_stop_the_hub_with_a_message(start_hub, env, names, says):
    with pytest.raises(RuntimeError) as failed:
        start_hub(env=env)
    message = str(failed.value)
    assert names in message and says in message, message
    assert "Traceback" not in message


def test_the_dummy_login_starts_on_loopback_or_with_the_override(start_hub):
    # The tests' own hubs: dummy on 127.0.0.1 (tests/harness.py), anyone logs in.
    start_hub().login("anyone")
    hub = start_hub(
        env={"GPUWS_BIND_URL": "http://0.0.0.0:8000", "GPUWS_ALLOW_INSECURE_LOGIN": "1"}
    )
    hub.login("anyone")


# -- TLS and cookies --------------------------------------------------------------------------


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made now (never committed)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class HttpsHub(Hub):
    """A hub whose proxy serves HTTPS (GPUWS_SSL_CERT / GPUWS_SSL_KEY)."""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def _login_cookies(url: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    """name -> the Set-Cookie header of each cookie a dummy login sets."""
    session = requests.Session()
    session.get(f"{url}/hub/login", timeout=30).raise_for_status()
    xsrf = next(c.value for c in session.cookies if c.name.endswith("_xsrf"))
    r = session.post(
        f"{url}/hub/login",
        data={"username": "alice", "password": "any", "_xsrf": xsrf},
        headers=headers or {},
        allow_redirects=False,
        timeout=30,
    )
    assert r.status_code == 302, (r.status_code, r.text[:300])
    cookies = {}
    for header in r.raw.headers.getlist("Set-Cookie"):
        cookies[header.split("=", 1)[0]] = header
    assert cookies, r.headers
    return cookies


def _attributes(set_cookie: str) -> set[str]:
    return {part.strip().split("=")[0].lower() for part in set_cookie.split(";")[1:]}


@pytest.fixture
def https_hub(docker_client, notebook_images, fake_gpu_hook, tmp_path, monkeypatch):
    cert, key = self_signed_certificate(tmp_path / "tls")
    # The harness's own requests (the health check, the REST API) trust this certificate.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    hubs: list[Hub] = []

    def start(env: dict[str, str]) -> Hub:
        prefix = f"gpuwst{secrets.token_hex(3)}"
        workdir = tmp_path / prefix
        workdir.mkdir()
        full = {"GPUWS_SSL_CERT": str(cert), "GPUWS_SSL_KEY": str(key), **env}
        hub = HttpsHub(prefix=prefix, workdir=workdir, env=full, extra_config="")
        hub.env["GPUWS_BIND_URL"] = hub.url
        hubs.append(hub)
        return hub.start()

    yield start
    for hub in hubs:
        hub.cleanup(docker_client)


@pytest.mark.parametrize("host_prefix", [False, True])
def test_https_with_a_generated_certificate_sets_secure_cookies(https_hub, host_prefix):
    hub = https_hub({"GPUWS_COOKIE_HOST_PREFIX": "1" if host_prefix else "0"})
    assert hub.url.startswith("https://")
    assert requests.get(f"{hub.url}/hub/health", timeout=30).status_code == 200
    # Our certificate, not one a public CA signed: refused against the public roots.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{hub.url}/hub/health", timeout=30, verify=certifi.where())
    # Plain HTTP on the same port gets no hub page.
    with pytest.raises(requests.RequestException):
        r = requests.get(f"http://127.0.0.1:{hub.port}/hub/login", timeout=10)
        r.raise_for_status()

    cookies = _login_cookies(hub.url)
    print(f"https cookies (host prefix {host_prefix}): {sorted(cookies)}")
    login_cookies = [n for n in cookies if "jupyterhub" in n]
    assert len(login_cookies) >= 2, cookies  # the hub's login cookie and the session id
    for name in login_cookies:
        assert {"secure", "httponly"} <= _attributes(cookies[name]), cookies[name]
    # JupyterHub puts the prefix on its login cookie: only this origin, path / and Secure.
    login = "__Host-jupyterhub-hub-login" if host_prefix else "jupyterhub-hub-login"
    assert login in cookies, sorted(cookies)
    if host_prefix:
        assert "Path=/;" in cookies[login] + ";" and "domain" not in _attributes(cookies[login])


def test_behind_a_tls_proxy_cookies_are_secure(start_hub):
    """The reverse-proxy setup of docs/deploy.md: the proxy says https with X-Scheme, or the
    hub knows its public https address (GPUWS_PUBLIC_URL)."""
    hub = start_hub()
    plain = _login_cookies(hub.url)
    assert all("secure" not in _attributes(v) for v in plain.values()), plain
    proxied = _login_cookies(hub.url, headers={"X-Scheme": "https"})
    assert all("secure" in _attributes(v) for n, v in proxied.items() if "jupyterhub" in n)

    public = start_hub(env={"GPUWS_PUBLIC_URL": f"https://127.0.0.1:{free_port()}"})
    cookies = _login_cookies(public.url)
    assert all("secure" in _attributes(v) for n, v in cookies.items() if "jupyterhub" in n)
