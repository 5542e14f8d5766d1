# JupyterHub configuration for GPU workspaces.
#
# Works in two places, chosen by GPUWS_IN_COMPOSE:
#   - inside the compose stack (docker-compose.yaml sets GPUWS_IN_COMPOSE=1): the hub is a
#     container on the workspaces network and notebook containers reach it by service name;
#   - directly on a host: `jupyterhub -f jupyterhub_config.py`; the hub's internal API then
#     listens on the workspaces network's gateway address, where containers reach it.
# Every setting comes from an environment variable with a working default; see
# docs/configuration.md and .env.example. Logic lives in the `spawner` package, not here.
import os

from spawner.core.loginpolicy import https_bind_url, insecure_login_problem, tls_problem
from spawner.hub.config import (
    ConfigError,
    check_spawner_config,
    ensure_network,
    env_bool,
    env_json_or_text,
    env_list,
    env_number,
    env_size,
    env_str,
    home_volume_from_env,
    profiles_from_env,
    secret_file,
    shared_data_from_env,
    unset_empty_env,
)
from spawner.hub.dashboard import handlers as gpu_dashboard_handlers
from spawner.hub.reclaim import idle_culler_service, reclaimer_service
from spawner.hub.sessionapi import handlers as session_handlers
from spawner.hub.startup import start_with_hub
from spawner.hub.usagereport import handlers as usage_handlers

c = get_config()  # type: ignore[name-defined]  # noqa: F821 - provided by JupyterHub
# Compose passes unset settings as empty strings; for oauthenticator, empty means unset.
unset_empty_env("OAUTH", "LOGIN_SERVICE", "GITHUB_")

in_compose = env_bool("GPUWS_IN_COMPOSE")
network = env_str("GPUWS_NETWORK", "gpu-workspaces")
state_dir = env_str("GPUWS_STATE_DIR", "/srv/jupyterhub/state" if in_compose else os.getcwd())
os.makedirs(state_dir, exist_ok=True)

# --- TLS and cookies (docs/deploy.md#tls) -------------------------------------------------
# A certificate and key (PEM; in compose under the GPUWS_TLS_DIR mount) make the proxy serve
# HTTPS; JupyterHub then marks its cookies Secure. Set before bind_url: its scheme follows.
ssl_cert, ssl_key = env_str("GPUWS_SSL_CERT"), env_str("GPUWS_SSL_KEY")
if problem := tls_problem(ssl_cert, ssl_key):
    raise ConfigError(problem)
if ssl_cert:
    c.JupyterHub.ssl_cert, c.JupyterHub.ssl_key = ssl_cert, ssl_key
# The address people use, e.g. https://hub.example.org behind a TLS-terminating proxy:
# with https, cookies are Secure whatever scheme reaches the hub.
if public_url := env_str("GPUWS_PUBLIC_URL"):
    c.JupyterHub.public_url = public_url
# __Host- cookies: only this exact origin may set or overwrite them (no cookie tossing from a
# sibling subdomain). They need HTTPS in the browser.
c.JupyterHub.cookie_host_prefix_enabled = env_bool("GPUWS_COOKIE_HOST_PREFIX")
# Each user's server on its own origin (https://<user>.hub.example.org): a page a user serves
# cannot act with another user's (an admin's) hub session. Needs wildcard DNS and certificate.
if subdomain_host := env_str("GPUWS_SUBDOMAIN_HOST"):
    c.JupyterHub.subdomain_host = subdomain_host

# --- the hub and its proxy ------------------------------------------------------------
bind_url = env_str("GPUWS_BIND_URL", "http://:8000")
c.JupyterHub.bind_url = https_bind_url(bind_url) if ssl_cert else bind_url
c.JupyterHub.db_url = env_str("GPUWS_DB_URL", f"sqlite:///{state_dir}/jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(state_dir, "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = os.path.join(state_dir, "jupyterhub.pid")
# Servers keep running while the hub restarts; they are re-adopted with their GPUs.
c.JupyterHub.cleanup_servers = False
c.ConfigurableHTTPProxy.should_start = True
# The proxy's API token: CONFIGPROXY_AUTH_TOKEN if set, else generated once and kept in the
# state volume (compose) or GPUWS_STATE_DIR; never printed, never in the image or compose file.
if not os.environ.get("CONFIGPROXY_AUTH_TOKEN") and (in_compose or env_str("GPUWS_STATE_DIR")):
    c.ConfigurableHTTPProxy.auth_token = secret_file(os.path.join(state_dir, "proxy_auth_token"))
c.ConfigurableHTTPProxy.pid_file = os.path.join(state_dir, "jupyterhub-proxy.pid")
c.JupyterHub.hub_port = int(env_number("GPUWS_HUB_API_PORT", 8081, minimum=1) or 8081)
if in_compose:
    c.JupyterHub.hub_ip = "0.0.0.0"  # only reachable on the compose network: not published
    c.JupyterHub.hub_connect_ip = env_str("GPUWS_HUB_CONNECT_HOST", "hub")
else:
    gateway = ensure_network(network)
    c.JupyterHub.hub_ip = gateway
    c.JupyterHub.hub_connect_ip = gateway

# --- who may log in -------------------------------------------------------------------
admins = set(env_list("GPUWS_ADMIN_USERS")) or {"admin"}
# the hub's pages this package changes (the progress page offers a browser notification)
hub_templates = os.path.join(os.path.dirname(__import__("spawner").__file__), "templates", "hub")
c.JupyterHub.template_paths = [hub_templates]
authenticator = env_str("GPUWS_AUTHENTICATOR", "native")
if authenticator == "native":
    # Sign-up on the login page; an admin approves each new user at /hub/authorize.
    # spawner.hub.nativeauth: the admin accounts exist before the hub listens (password from
    # GPUWS_ADMIN_PASSWORD, else generated once into the state folder, mode 0600, and shown
    # by `make up`); nobody can sign up under an admin name; no 500 on any login input.
    c.JupyterHub.authenticator_class = "spawner.hub.nativeauth.NativeAuthenticator"
    c.NativeAuthenticator.open_signup = env_bool("GPUWS_OPEN_SIGNUP", False)
    min_length = int(env_number("GPUWS_MIN_PASSWORD_LENGTH", 8, minimum=8) or 8)
    c.NativeAuthenticator.minimum_password_length = min_length
    c.NativeAuthenticator.check_common_password = True
    # After this many failed logins an account is locked for GPUWS_LOGIN_LOCKOUT_SECONDS
    # (the right password too); kept in the hub's memory, per account.
    attempts = int(env_number("GPUWS_LOGIN_ATTEMPTS", 5, minimum=1) or 5)
    c.NativeAuthenticator.allowed_failed_logins = attempts
    lockout = int(env_number("GPUWS_LOGIN_LOCKOUT_SECONDS", 600, minimum=1) or 600)
    c.NativeAuthenticator.seconds_before_next_try = lockout
    c.NativeAuthenticator.admin_password_file = os.path.join(state_dir, "initial_admin_password")
    if admin_password := env_str("GPUWS_ADMIN_PASSWORD"):
        from spawner.hub.nativeauth import admin_password_problem

        if problem := admin_password_problem(admin_password, minimum_length=min_length):
            raise ConfigError(f"GPUWS_ADMIN_PASSWORD: {problem}")
        c.NativeAuthenticator.admin_password = admin_password
    c.JupyterHub.template_paths = [
        hub_templates,
        os.path.join(os.path.dirname(__import__("nativeauthenticator").__file__), "templates"),
    ]
else:
    # e.g. "dummy" for demos and tests, or "github" / "generic-oauth" (see docs/authentication.md)
    c.JupyterHub.authenticator_class = authenticator
# dummy lets anyone in as anyone: only on a loopback bind, unless explicitly allowed.
allow_insecure = env_bool("GPUWS_ALLOW_INSECURE_LOGIN")
if problem := insecure_login_problem(authenticator, bind_url, allowed=allow_insecure):
    raise ConfigError(problem)
c.Authenticator.admin_users = admins
# NativeAuthenticator gates users by admin approval, so "all" means "all approved"; for
# OAuth set GPUWS_ALLOW_ALL=0 and an allow-list (see docs/authentication.md).
c.Authenticator.allow_all = env_bool("GPUWS_ALLOW_ALL", authenticator in ("native", "dummy"))
# With OAuth: who may log in besides the admins (comma-separated names).
if allowed := env_list("GPUWS_ALLOWED_USERS"):
    c.Authenticator.allowed_users = set(allowed)

# --- the spawner ------------------------------------------------------------------------
c.JupyterHub.spawner_class = "gpu-docker"
c.GPUDockerSpawner.image = env_str("GPUWS_NOTEBOOK_IMAGE", "gpu-workspaces/datascience-cpu:6.1.1")
c.GPUDockerSpawner.gpu_image = env_str("GPUWS_GPU_IMAGE", "gpu-workspaces/datascience-cuda:6.1.1")
c.GPUDockerSpawner.network_name = network
# Network isolation (docs/security.md#network-isolation): in compose the netguard service
# keeps the rules and vouches for them in the state volume; no server starts without that.
if in_compose and env_bool("GPUWS_NETWORK_ISOLATION", True):
    c.GPUDockerSpawner.network_guard_file = os.path.join(state_dir, "netguard.json")
# Container names are <prefix>-<user>; two hubs on one engine need different prefixes.
c.GPUDockerSpawner.prefix = env_str("GPUWS_CONTAINER_PREFIX", "gpuws")
# This hub's own id, on every container it makes: a second hub with the same prefix on one
# engine refuses to start instead of taking over the first one's servers.
c.GPUDockerSpawner.hub_instance = secret_file(os.path.join(state_dir, "hub_instance"), nbytes=8)
c.GPUDockerSpawner.pull_policy = env_str("GPUWS_PULL_POLICY", "ifnotpresent")
# Empty: discover through NVML. Static: "4", "0,1,2,3" or JSON [{"id": ..., "name": ...}].
c.GPUDockerSpawner.gpu_inventory = inventory = env_json_or_text("GPUWS_GPU_INVENTORY")
# A YAML/JSON list of profiles; default: CPU, 1 GPU, 2 GPUs (those the host can serve).
c.GPUDockerSpawner.profiles = profiles_from_env("GPUWS_PROFILES_FILE", inventory=inventory)
c.GPUDockerSpawner.gpu_wait_timeout = env_number("GPUWS_GPU_WAIT_TIMEOUT", 300.0)
# device-requests (--gpus), nvidia-runtime (nvidia-docker2 hosts) or cdi (Docker 25+).
c.GPUDockerSpawner.gpu_mechanism = env_str("GPUWS_GPU_MECHANISM", "device-requests")
c.GPUDockerSpawner.gpu_queue_limit_per_user = int(env_number("GPUWS_GPU_QUEUE_LIMIT", 1) or 0)
# Named servers, when an admin turns them on, are capped so one user cannot fill the queue.
c.JupyterHub.named_server_limit_per_user = int(env_number("GPUWS_NAMED_SERVER_LIMIT", 3) or 0)
quota = env_number("GPUWS_GPU_QUOTA_PER_USER", None)
c.GPUDockerSpawner.gpu_quota_per_user = None if quota is None else int(quota)
if (shm := env_size("GPUWS_DEFAULT_SHM_SIZE")) is not None:
    c.GPUDockerSpawner.default_shm_size = shm
if (mem := env_size("GPUWS_MEM_LIMIT")) is not None:
    c.GPUDockerSpawner.mem_limit = mem
# Each user's home is a named volume: it survives stop, container removal and hub restarts.
# Volume names hold DockerSpawner's escaped user name ([a-z0-9-] only), never the raw one.
c.GPUDockerSpawner.volumes = {home_volume_from_env("GPUWS_HOME_VOLUME"): "/home/jovyan"}
# Shared data, read-only for everyone: "/srv/datasets:/home/jovyan/datasets,/srv/x:/data/x".
# Host paths are on the Docker host (also when the hub runs in compose).
c.GPUDockerSpawner.read_only_volumes = shared_data_from_env("GPUWS_SHARED_DATA")
c.GPUDockerSpawner.notebook_dir = "/home/jovyan"
c.GPUDockerSpawner.default_url = "/lab"
c.GPUDockerSpawner.http_timeout = int(env_number("GPUWS_HTTP_TIMEOUT", 60) or 60)
c.GPUDockerSpawner.start_timeout = int(env_number("GPUWS_START_TIMEOUT", 600) or 600)

# --- idle reclaim, GPU dashboard, metrics (docs/operations.md) -----------------------
# Any server idle this long is stopped by jupyterhub-idle-culler (0: never).
c.GPUReclaimer.idle_timeout = idle_timeout = env_number("GPUWS_IDLE_TIMEOUT", 7200.0) or 0.0
# GPU servers are stopped sooner, and their GPUs go to the next user (0: idle_timeout only).
gpu_idle_timeout = env_number("GPUWS_GPU_IDLE_TIMEOUT", 1800.0) or 0.0
c.GPUReclaimer.gpu_idle_timeout = gpu_idle_timeout
# With NVML: a GPU server is idle only if its GPUs also show no utilisation.
c.GPUReclaimer.require_no_gpu_utilization = env_bool("GPUWS_GPU_IDLE_REQUIRE_NO_UTILIZATION", True)
c.GPUReclaimer.utilization_threshold = int(env_number("GPUWS_GPU_IDLE_UTILIZATION", 1) or 1)
# How often busy kernels, GPU use and idleness are checked (at most half of each timeout).
check_every = env_number("GPUWS_IDLE_CHECK_INTERVAL", 60.0, minimum=0.1) or 60.0
c.GPUReclaimer.check_interval = check_every
if idle_timeout:
    culler, culler_role = idle_culler_service(idle_timeout, check_every)
    c.JupyterHub.services.append(culler)
    c.JupyterHub.load_roles.append(culler_role)
# JupyterLab warns this long before an idle reclaim or a session limit (docs/in-session.md).
c.GPUReclaimer.warn_before = env_number("GPUWS_STOP_WARNING", 600.0) or 0.0
c.GPUReclaimer.status_poll_interval = env_number("GPUWS_STATUS_POLL_INTERVAL", 15.0, minimum=1)
# The reclaimer acts through the REST API as the service gpu-reclaimer (users:activity and
# delete:servers only); its token is made once and kept with the other secrets. It runs
# even with both timeouts off: profiles' session limits (max_age) need it.
reclaimer_token = secret_file(os.path.join(state_dir, "reclaimer_api_token"))
c.GPUReclaimer.api_token = reclaimer_token
reclaimer, reclaimer_role = reclaimer_service(reclaimer_token)
c.JupyterHub.services.append(reclaimer)
c.JupyterHub.load_roles.append(reclaimer_role)
# /hub/gpus (page) and /hub/api/gpus (JSON), for admins: every GPU, its holder, the queue.
c.JupyterHub.extra_handlers = gpu_dashboard_handlers() + session_handlers() + usage_handlers()

# --- GPU-hours: records, budgets, reports (docs/usage.md) ----------------------------------
# Records live in the hub's database (db_url above): sqlite in the state folder, or
# PostgreSQL with GPUWS_DB_URL=postgresql://user:password@host/db. Budgets in GPU-hours.
if (hours := env_number("GPUWS_GPU_HOURS_PER_USER", None)) is not None:
    c.GPUDockerSpawner.gpu_hours_per_user = hours
c.GPUDockerSpawner.gpu_hours_per_user_by_group = env_json_or_text("GPUWS_GPU_HOURS_BY_GROUP") or {}
c.GPUDockerSpawner.gpu_hours_per_group = env_json_or_text("GPUWS_GPU_HOURS_PER_GROUP") or {}
c.GPUDockerSpawner.gpu_hours_period = env_str("GPUWS_GPU_HOURS_PERIOD", "month")
c.GPUDockerSpawner.gpu_hours_rolling = env_bool("GPUWS_GPU_HOURS_ROLLING")
c.GPUDockerSpawner.on_budget_exhausted = env_str("GPUWS_ON_BUDGET_EXHAUSTED", "stop")
c.GPUAccounting.retention_days = env_number("GPUWS_USAGE_RETENTION_DAYS", 400.0) or 400.0
c.GPUAccounting.check_interval = env_number("GPUWS_USAGE_CHECK_INTERVAL", 15.0, minimum=0.5) or 15.0
c.GPUAccounting.metrics_per_user = env_bool("GPUWS_USAGE_METRICS_PER_USER")
# /hub/metrics (jupyterhub_gpus_*, jupyterhub_gpu_*) needs a token with read:metrics:
# GPUWS_METRICS_TOKEN becomes the token of a "prometheus" service holding only that scope.
if metrics_token := env_str("GPUWS_METRICS_TOKEN"):
    c.JupyterHub.services.append({"name": "prometheus", "api_token": metrics_token})
    c.JupyterHub.load_roles.append(
        {"name": "prometheus", "scopes": ["read:metrics"], "services": ["prometheus"]}
    )
# The reclaimer and the GPU pool live in the hub process; settings are checked here.
start_with_hub(c)

# Refuse to start with a message that names the option, instead of failing at first spawn.
if not env_bool("GPUWS_SKIP_CHECKS"):
    check_spawner_config(c)
