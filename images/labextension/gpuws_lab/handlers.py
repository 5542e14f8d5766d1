"""Handlers for gpuws/status, gpuws/keep and gpuws/extend (see docs/images.md).

They ask the hub (JUPYTERHUB_API_URL, with the server's own token) and NVML, and none of
them counts as user activity: the frontend polls them, and polling must not keep a GPU
server from being reclaimed as idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from jupyter_server.base.handlers import APIHandler
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.web import Application

HUB_TIMEOUT_S = 5.0


class HubError(Exception):
    """The hub did not answer as expected; str() is one sentence for the user."""

    def __init__(self, sentence: str, code: int | None = None) -> None:
        super().__init__(sentence)
        self.code = code


def _now() -> str:
    # timezone.utc, not datetime.UTC: the CUDA public base (Ubuntu 22.04) has Python 3.10.
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: UP017


def _sentence(text: str) -> str:
    text = " ".join(str(text).split()) or "Unknown error"
    return text if text.endswith((".", "!", "?")) else text + "."


def read_nvml() -> tuple[list[dict[str, Any]] | None, str | None]:
    """The GPUs NVML sees (only this container's), or None and why not."""
    try:
        import pynvml  # nvidia-ml-py: in the datascience-cuda image, not the lean ones
    except ImportError:
        return None, "NVML is not available: nvidia-ml-py (pynvml) is not installed in this image."
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return None, f"No NVIDIA driver here ({error})."
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            gpu: dict[str, Any] = {
                "index": index,
                "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
                "name": _text(pynvml.nvmlDeviceGetName(handle)),
                "utilization": None,
                "memory_used_mib": None,
                "memory_total_mib": None,
            }
            # Some GPUs (MIG slices, older boards) do not report every figure.
            with contextlib.suppress(pynvml.NVMLError):
                gpu["utilization"] = int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            try:
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                gpu["memory_used_mib"] = int(memory.used) // 2**20
                gpu["memory_total_mib"] = int(memory.total) // 2**20
            except pynvml.NVMLError:
                pass
            gpus.append(gpu)
        return gpus, None
    except pynvml.NVMLError as error:
        return None, f"NVML failed to list the GPUs ({error})."
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    # nvidia-ml-py before 11.5 returned bytes
    return value.decode() if isinstance(value, bytes) else str(value)


class Hub:
    """The hub's API, as this server's environment describes it."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.api_url = env.get("JUPYTERHUB_API_URL", "").rstrip("/")
        self.token = env.get("JUPYTERHUB_API_TOKEN", "")
        self.user = env.get("JUPYTERHUB_USER", "")
        self.server = env.get("JUPYTERHUB_SERVER_NAME", "")
        # Internal SSL (JupyterHub's internal_ssl): the same files the singleuser server uses.
        self.ssl = {
            "ca_certs": env.get("JUPYTERHUB_SSL_CLIENT_CA") or None,
            "client_cert": env.get("JUPYTERHUB_SSL_CERTFILE") or None,
            "client_key": env.get("JUPYTERHUB_SSL_KEYFILE") or None,
        }

    def session_url(self) -> str:
        url = f"{self.api_url}/gpus/servers/{quote(self.user, safe='')}"
        return f"{url}/{quote(self.server, safe='')}" if self.server else url

    async def request(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        """One JSON call; HubError with a sentence for anything but a 2xx JSON answer."""
        if not (self.api_url and self.token and self.user):
            raise HubError(
                "Not started by JupyterHub (no JUPYTERHUB_API_URL, token or user), "
                "so the hub's limits are unknown."
            )
        request = HTTPRequest(
            url,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
            body=None if body is None else json.dumps(body),
            connect_timeout=HUB_TIMEOUT_S,
            request_timeout=HUB_TIMEOUT_S,
            **{k: v for k, v in self.ssl.items() if v},
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (TimeoutError, OSError, HTTPClientError) as error:
            raise HubError(f"The hub at {self.api_url} did not answer ({error}).") from None
        if response.code == 599:  # tornado's own code for a timeout or connection failure
            raise HubError(
                f"The hub at {self.api_url} did not answer ({response.error or 'no response'})."
            )
        try:
            answer = json.loads(response.body or b"null")
        except ValueError:
            answer = None
        if response.code >= 300:
            message = answer.get("message") if isinstance(answer, dict) else None
            if response.code == 409:  # e.g. no extension left: the hub's sentence as it is
                raise HubError(_sentence(message or "The hub cannot do that now"), 409)
            if response.code == 404 and not message:
                message = "the hub has no GPU session endpoint"
            reason = message or response.reason
            raise HubError(
                _sentence(f"The hub refused the request (HTTP {response.code}: {reason})"),
                response.code,
            )
        return answer


class _Base(APIHandler):
    """Shared by the three handlers: never counts as user activity."""

    # jupyter_server (2.x) skips settings["api_last_activity"] for such handlers.
    _track_activity = False

    def update_api_activity(self) -> None:
        """Do nothing: polling is not activity (also for servers without _track_activity)."""

    async def status(self, hub_doc: Any = None, hub_error: str | None = None) -> dict[str, Any]:
        """The status document; hub_doc is asked for unless given."""
        hub = Hub()
        if hub_doc is None and hub_error is None:
            try:
                hub_doc = await hub.request("GET", hub.session_url())
            except HubError as error:
                hub_error = str(error)
        nvml, nvml_error = await asyncio.get_running_loop().run_in_executor(None, read_nvml)
        return {
            "hub": hub_doc if hub_error is None else None,
            "hub_error": hub_error,
            "nvml": nvml,
            "nvml_error": nvml_error,
            "visible_devices": os.environ.get("NVIDIA_VISIBLE_DEVICES") or None,
        }

    def fail(self, code: int, sentence: str) -> None:
        self.set_status(code)
        self.finish(json.dumps({"message": sentence}))


class StatusHandler(_Base):
    """GET gpuws/status."""

    @web.authenticated
    async def get(self) -> None:
        self.finish(json.dumps(await self.status()))


class KeepHandler(_Base):
    """POST gpuws/keep: tell the hub the user is here, then answer the status."""

    @web.authenticated
    async def post(self) -> None:
        hub = Hub()
        now = _now()
        body = {"last_activity": now, "servers": {hub.server: {"last_activity": now}}}
        try:
            await hub.request(
                "POST", f"{hub.api_url}/users/{quote(hub.user, safe='')}/activity", body
            )
        except HubError as error:
            self.fail(502, str(error))
            return
        self.finish(json.dumps(await self.status()))


class ExtendHandler(_Base):
    """POST gpuws/extend: ask the hub for one more session extension."""

    @web.authenticated
    async def post(self) -> None:
        hub = Hub()
        try:
            doc = await hub.request("POST", hub.session_url(), {"action": "extend"})
        except HubError as error:
            self.fail(409 if error.code == 409 else 502, str(error))
            return
        self.finish(json.dumps(await self.status(hub_doc=doc)))


def setup_handlers(web_app: Application) -> None:
    """Register the handlers under base_url."""
    base_url = web_app.settings.get("base_url", "/")
    web_app.add_handlers(
        ".*$",
        [
            (f"{base_url}gpuws/status", StatusHandler),
            (f"{base_url}gpuws/keep", KeepHandler),
            (f"{base_url}gpuws/extend", ExtendHandler),
        ],
    )
