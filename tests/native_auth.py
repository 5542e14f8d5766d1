"""What a person does on the default login (NativeAuthenticator), over plain HTTP.

Sign up on /hub/signup (admin names are refused: the hub makes those accounts at start-up,
with GPUWS_ADMIN_PASSWORD or the initial password it keeps in its state folder), log in on
/hub/login, and make an API token with the login session
(JupyterHub checks the ``_xsrf`` cookie against the ``X-XSRFToken`` header for cookie-
authenticated API calls). Passwords and tokens stay in memory; nothing here prints them.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import requests

TIMEOUT = 30
# Where the hub keeps the admins' generated initial password (spawner/hub/nativeauth.py).
INITIAL_PASSWORD_FILE = "initial_admin_password"


def initial_admin_password(state_dir: Path) -> str:
    """The admins' initial password the hub generated into its state folder (mode 0600)."""
    return (state_dir / INITIAL_PASSWORD_FILE).read_text().strip()


def sign_up(base_url: str, username: str, password: str) -> str:
    """Fill in the sign-up form; returns the message the page shows."""
    session = requests.Session()
    session.get(f"{base_url}/hub/signup", timeout=TIMEOUT).raise_for_status()
    r = session.post(
        f"{base_url}/hub/signup",
        data={
            "username": username,
            "signup_password": password,
            "signup_password_confirmation": password,
            "_xsrf": session.cookies.get("_xsrf", ""),
        },
        timeout=TIMEOUT,
    )
    r.raise_for_status()
    match = re.search(r'<div class="alert[^"]*"[^>]*>(.*?)</div>', r.text, re.S)
    text = re.sub(r"<[^>]+>", " ", match.group(1)) if match else ""
    return " ".join(html.unescape(text).split())


def log_in(base_url: str, username: str, password: str) -> requests.Session:
    """A session signed in through the login form; fails with the page's message if refused."""
    session = requests.Session()
    session.get(f"{base_url}/hub/login", timeout=TIMEOUT).raise_for_status()
    r = session.post(
        f"{base_url}/hub/login",
        data={
            "username": username,
            "password": password,
            "_xsrf": session.cookies.get("_xsrf", ""),
        },
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    if r.status_code != 302:
        error = re.search(r'<p class="login_error">(.*?)</p>', r.text, re.S)
        raise AssertionError(
            f"login of {username!r} refused ({r.status_code}): "
            f"{html.unescape(error.group(1)).strip() if error else r.text[:300]}"
        )
    return session


def api_token(session: requests.Session, base_url: str, username: str) -> str:
    """A new API token for the signed-in user, made with their login session."""
    r = session.post(
        f"{base_url}/hub/api/users/{username}/tokens",
        json={"note": "gpu-workspaces test", "expires_in": 3600},
        headers={"X-XSRFToken": session.cookies.get("_xsrf", "")},
        timeout=TIMEOUT,
    )
    assert r.status_code == 201, f"token request refused: {r.status_code}"
    return str(r.json()["token"])
