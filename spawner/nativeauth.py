"""NativeAuthenticator (sign-up + admin approval) made to work on JupyterHub 6.

jupyterhub-nativeauthenticator 1.3.0 (the newest release) was written for JupyterHub 4/5. On
JupyterHub 6 its login handler fails on every login with ``AttributeError: 'LoginHandler'
object has no attribute 'statsd'`` (JupyterHub 6 dropped statsd), and an error during a login
POST (an expired form, say) fails again while JupyterHub renders it into the login form, which
NativeAuthenticator's form renderer does not support. This subclass swaps in a login handler
that fixes both and changes nothing else; ``c.NativeAuthenticator.*`` settings apply to it.
"""

from __future__ import annotations

from typing import Any

from jupyterhub.handlers import BaseHandler
from nativeauthenticator import NativeAuthenticator as _NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler as _NativeLoginHandler


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
    """NativeAuthenticator's login form and messages, on JupyterHub 6 too."""

    if not hasattr(_NativeLoginHandler, "statsd"):
        statsd = _NoStatsd()

    def render_template(self, name: str, **ns: Any) -> Any:
        if name == "error.html":
            # The plain error page: NativeAuthenticator's login renderer takes no error args.
            return BaseHandler.render_template(self, name, **ns)
        return super().render_template(name, **ns)


class NativeAuthenticator(_NativeAuthenticator):  # type: ignore[misc]
    """``nativeauthenticator.NativeAuthenticator`` with :class:`LoginHandler`."""

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        return [
            (route, LoginHandler if handler is _NativeLoginHandler else handler)
            for route, handler in super().get_handlers(app)
        ]
