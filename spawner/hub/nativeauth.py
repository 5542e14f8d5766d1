"""NativeAuthenticator (sign-up + admin approval), made safe to expose and to run on JupyterHub 6.

jupyterhub-nativeauthenticator 1.3.0 (the newest release) was written for JupyterHub 4/5. This
subclass keeps its models, pages and ``c.NativeAuthenticator.*`` settings and changes:

- the admin accounts (``admin_users``) exist before the hub accepts connections: JupyterHub
  calls :meth:`NativeAuthenticator.add_user` for each at start-up, which stores their
  ``UserInfo`` with ``admin_password`` or a generated initial password kept in
  ``admin_password_file`` (mode 0600). A sign-up of an admin name is refused, and no sign-up
  is approved because its name is in a list an outsider can guess: an admin approves at
  /hub/authorize, or ``open_signup`` approves everyone;
- no 500 from the login or sign-up form on any input (missing fields, passwords bcrypt cannot
  hash, TOTP fields on accounts without a secret), and a locked-out account is told so;
- its login handler works on JupyterHub 6 (upstream times logins with JupyterHub's removed
  statsd client, and renders errors into a form that takes no error arguments).
"""

from __future__ import annotations

import functools
import math
import os
import secrets
from datetime import datetime
from typing import Any

import bcrypt
import nativeauthenticator
from jupyterhub.handlers import BaseHandler
from nativeauthenticator import NativeAuthenticator as _NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler as _NativeLoginHandler
from nativeauthenticator.handlers import SignUpHandler as _NativeSignUpHandler
from nativeauthenticator.orm import UserInfo
from traitlets import Unicode

from spawner.core.loginpolicy import password_problem, username_problem

# Longer names are cut in the page and the log (they are echoed into the login form).
_SHOWN_NAME = 64


@functools.cache
def common_passwords() -> frozenset[str]:
    """NativeAuthenticator's list of common passwords (the one check_common_password uses)."""
    path = os.path.join(os.path.dirname(nativeauthenticator.__file__), "common-credentials.txt")
    with open(path) as f:
        return frozenset(line for line in f.read().splitlines() if line)


def admin_password_problem(password: str, *, minimum_length: int) -> str | None:
    """Why ``password`` cannot be an admin's password (the sign-up rules), or None."""
    return password_problem(password, minimum_length=minimum_length, common=common_passwords())


def _password_matches(info: Any, password: str) -> bool:
    """bcrypt check that says no, instead of raising, to what bcrypt cannot hash."""
    try:
        return bool(info.is_valid_password(password))
    except (ValueError, TypeError):
        return False


class _NoTimer:
    def start(self) -> _NoTimer:
        return self

    def stop(self, send: bool = True) -> None:
        return None


class _NoStatsd:
    """The one statsd call NativeAuthenticator makes, as a no-op."""

    def timer(self, name: str) -> _NoTimer:
        return _NoTimer()


class LoginHandler(_NativeLoginHandler):  # type: ignore[misc]
    """NativeAuthenticator's login form, on JupyterHub 6, with an answer for every input."""

    if not hasattr(_NativeLoginHandler, "statsd"):
        statsd = _NoStatsd()

    def render_template(self, name: str, **ns: Any) -> Any:
        if name == "error.html":
            # The plain error page: NativeAuthenticator's login renderer takes no error args.
            return BaseHandler.render_template(self, name, **ns)
        return super().render_template(name, **ns)

    async def post(self) -> None:
        # Form fields only (not the query string), as JupyterHub's own login handler reads
        # them; a missing field is an empty one. Bytes that are not UTF-8 are a 400 here.
        data = {
            arg: self.get_body_argument(arg, strip=arg == "username")
            for arg in self.request.body_arguments
            if arg != "_xsrf"
        }
        data.setdefault("username", "")
        data.setdefault("password", "")
        user = await self.login_user(data)
        if user:
            self._jupyterhub_user = user
            self.redirect(self.get_next_url(user))
            return
        status, error = self.authenticator.login_refusal(data["username"], data["password"])
        self.set_status(status)
        shown = data["username"] if len(data["username"]) <= _SHOWN_NAME else ""
        self.finish(await self._render(login_error=error, username=shown))


class SignUpHandler(_NativeSignUpHandler):  # type: ignore[misc]
    """NativeAuthenticator's sign-up form; says why a sign-up is refused, never a 500."""

    async def post(self) -> None:
        if not self.authenticator.enable_signup:
            await super().post()  # its 404
            return
        username = self.get_body_argument("username", "", strip=False)
        password = self.get_body_argument("signup_password", "", strip=False)
        refusal = self.authenticator.signup_refusal(username, password)
        if refusal is None:
            await super().post()
            return
        # 200 with the reason in the page, as upstream answers its own refusals.
        html = await self.render_template(
            "signup.html",
            ask_email=self.authenticator.ask_email_on_signup,
            result_message=refusal,
            alert="alert-danger",
            two_factor_auth=self.authenticator.allow_2fa,
            recaptcha_key=self.authenticator.recaptcha_key,
            tos=self.authenticator.tos,
        )
        self.finish(html)


class NativeAuthenticator(_NativeAuthenticator):  # type: ignore[misc]
    """``nativeauthenticator.NativeAuthenticator`` with admin accounts made at start-up."""

    admin_password = Unicode(
        "",
        help="""Password of each admin account (admin_users) when it is created at start-up.

        Empty: a random password is generated once into admin_password_file. Either way it
        applies only when the account is created; change it later at /hub/change-password.
        Never logged.
        """,
    ).tag(config=True)

    admin_password_file = Unicode(
        "initial_admin_password",
        help="""File (mode 0600) holding the generated initial admin password.

        Written when an admin account is created without admin_password, removed once no
        admin account has that password any more.
        """,
    ).tag(config=True)

    # -- admin accounts ---------------------------------------------------------------

    def _initial_password(self) -> tuple[str, str]:
        """The password a new admin account gets, and where it came from (for the log)."""
        if self.admin_password:
            return self.admin_password, "admin_password (GPUWS_ADMIN_PASSWORD)"
        path = self.admin_password_file
        try:
            with open(path) as f:
                if existing := f.read().strip():
                    return existing, path
        except FileNotFoundError:
            pass
        password = secrets.token_urlsafe(18)
        # O_EXCL|0600: never readable by others, not even for a moment.
        fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        os.replace(path + ".new", path)
        return password, path

    def add_user(self, user: Any) -> Any:
        """JupyterHub's hook, called at start-up for every user in its database (the admins
        of the config among them) before the hub listens: store each missing admin account."""
        result = super().add_user(user)
        name = user.name
        if name in self.admin_users and UserInfo.find(self.db, name) is None:
            password, source = self._initial_password()
            if problem := self.password_refusal(password):
                raise ValueError(f"the admin password from {source} is refused: {problem}")
            info = UserInfo(
                username=name,
                password=self._hash(password),
                is_authorized=True,
            )
            self.db.add(info)
            self.db.commit()
            self.log.info(
                "Created the admin account %r with the password from %s; change it at "
                "/hub/change-password",
                name,
                source,
            )
        return result

    @staticmethod
    def _hash(password: str) -> bytes:
        return bytes(bcrypt.hashpw(password.encode(), bcrypt.gensalt()))

    def change_password(self, username: str, new_password: str) -> Any:
        changed = super().change_password(username, new_password)
        if changed:
            self._forget_initial_password()
        return changed

    def _forget_initial_password(self) -> None:
        """Remove the initial password file once no admin account still uses it."""
        try:
            with open(self.admin_password_file) as f:
                initial = f.read().strip()
        except FileNotFoundError:
            return
        for name in self.admin_users:
            info = UserInfo.find(self.db, name)
            if info is not None and _password_matches(info, initial):
                return
        os.remove(self.admin_password_file)
        self.log.info(
            "Removed %s: no admin account has that password any more", self.admin_password_file
        )

    # -- sign-up ------------------------------------------------------------------------

    def password_refusal(self, password: str) -> str | None:
        common = common_passwords() if self.check_common_password else frozenset()
        return password_problem(
            password, minimum_length=self.minimum_password_length, common=common
        )

    def is_password_strong(self, password: str) -> bool:
        # Also used by change_password: a password bcrypt cannot hash is never "strong".
        return self.password_refusal(password) is None

    def signup_refusal(self, username: str, password: str) -> str | None:
        """Why a sign-up is refused, as the sentence the page shows; None: go ahead."""
        if problem := username_problem(username):
            return problem[0].upper() + problem[1:] + "."
        name = self.normalize_username(username)
        if name in self.admin_users:
            return (
                f"The name {name!r} belongs to an administrator; its account is made when "
                "the hub starts. Choose another name."
            )
        if problem := self.password_refusal(password):
            return problem[0].upper() + problem[1:] + "."
        return None

    def get_authed_users(self) -> set[str]:
        # Upstream adds admin_users and allowed_users here, which pre-approves any sign-up
        # with one of those names: a list an outsider can guess. Only approved accounts count.
        return {info.username for info in UserInfo.all_users(self.db) if info.is_authorized}

    def create_user(self, username: str, password: str, **kwargs: Any) -> Any:
        if self.signup_refusal(username, password) is not None:
            return None
        return super().create_user(username, password, **kwargs)

    # -- login --------------------------------------------------------------------------

    def _seconds_locked(self, username: str) -> int:
        """Seconds until ``username`` may try again (0: not locked out)."""
        if not self.allowed_failed_logins or not self.is_blocked(username):
            return 0
        last: datetime = self.login_attempts[username]["time"]
        since = (datetime.now() - last).total_seconds()
        # Upstream unlocks once the whole seconds since the last failure exceed the setting.
        return max(1, math.ceil(int(self.seconds_before_next_try) + 1 - since))

    async def authenticate(self, handler: Any, data: dict[str, Any]) -> str | None:
        username = data.get("username")
        password = data.get("password")
        if not isinstance(username, str) or not isinstance(password, str) or not username:
            return None
        username = self.normalize_username(username)
        info = self.get_user(username)
        if info is None or self._seconds_locked(username):
            return None
        valid = bool(info.is_authorized) and _password_matches(info, password)
        if valid and info.has_2fa:
            token = data.get("2fa")
            try:
                valid = isinstance(token, str) and bool(info.is_valid_token(token))
            except (ValueError, TypeError):
                valid = False
        if valid:
            self.successful_login(username)
            return str(username)
        self.add_login_attempt(username)
        return None

    def login_refusal(self, username: str, password: str) -> tuple[int, str]:
        """HTTP status and sentence for a refused login."""
        name = self.normalize_username(username) if username else ""
        if wait := self._seconds_locked(name):
            # Said without checking the password: the lockout is no password oracle.
            return 429, (f"Too many failed logins for this account; try again in {wait} seconds.")
        info = self.get_user(name) if name else None
        if info is not None and not info.is_authorized and _password_matches(info, password):
            return 403, f"User {name} has not been authorized by an administrator yet."
        return 403, "Invalid username or password."

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        ours = {_NativeLoginHandler: LoginHandler, _NativeSignUpHandler: SignUpHandler}
        return [(route, ours.get(handler, handler)) for route, handler in super().get_handlers(app)]
