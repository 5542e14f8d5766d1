"""The deployment settings of jupyterhub_config.py's helpers: shared data, home volume names,
the generated proxy token, compose's empty variables (no engine)."""

from __future__ import annotations

import os
import stat

import pytest

from spawner.hub.config import (
    ConfigError,
    home_volume_from_env,
    secret_file,
    shared_data_from_env,
    unset_empty_env,
)

HOME = "/home/jovyan"


@pytest.mark.parametrize(
    "value, mounts",
    [
        ("", {}),
        ("/srv/datasets:/home/jovyan/datasets", {"/srv/datasets": f"{HOME}/datasets"}),
        ("/srv/models:/data/models:ro", {"/srv/models": "/data/models"}),
        (
            " /srv/a:/data/a , /srv/b:/data/b ,",
            {"/srv/a": "/data/a", "/srv/b": "/data/b"},
        ),
        ("/mnt/nfs/etc-data:/data/x", {"/mnt/nfs/etc-data": "/data/x"}),
    ],
)
def test_shared_data_accepted(monkeypatch, value, mounts):
    monkeypatch.setenv("GPUWS_SHARED_DATA", value)
    assert shared_data_from_env() == mounts


@pytest.mark.parametrize(
    "value, message",
    [
        ("/srv/data", "write HOST:CONTAINER"),
        ("/srv/data:/data:rw", "always mounted read-only"),
        ("/srv/data:/data:ro:ro", "write HOST:CONTAINER"),
        ("/a:/b:/c", "write HOST:CONTAINER"),
        ("srv/data:/data", "host path 'srv/data' must be absolute"),
        ("/srv/data:data", "container path 'data' must be absolute"),
        ("/srv/../etc:/data", "without '.', '..'"),
        ("/srv/./data:/data", "without '.', '..'"),
        ("//srv/data:/data", "without '.', '..', '//'"),
        ("/srv/data/:/data", "trailing '/'"),
        ("/srv/data:/home/jovyan/../../etc", "without '.', '..'"),
        ("/srv/{raw_username}:/data", "not allowed"),
        ("/srv/data:/data/{username}", "not allowed"),
        ("/srv/da\\ta:/data", "not allowed"),
        ("/srv/da\nta:/data", "not allowed"),
        ("/:/data", "is not a data folder"),
        ("/etc:/data", "is not a data folder"),
        ("/etc/ssl:/data", "is not a data folder"),
        ("/var/run/docker.sock:/data/sock", "is not a data folder"),
        ("/run/docker.sock:/data/sock", "is not a data folder"),
        ("/var/lib/docker/volumes:/data", "is not a data folder"),
        ("/proc:/data", "is not a data folder"),
        ("/dev/sda:/data", "is not a data folder"),
        ("/srv/data:/", "would hide the home folder"),
        ("/srv/data:/home", "would hide the home folder"),
        ("/srv/data:/home/jovyan", "would hide the home folder"),
        ("/srv/a:/data,/srv/b:/data", "target of two mounts"),
        ("/srv/a:/data/a,/srv/a:/data/b", "listed twice"),
    ],
)
def test_shared_data_refused_with_a_message(monkeypatch, value, message):
    monkeypatch.setenv("GPUWS_SHARED_DATA", value)
    with pytest.raises(ConfigError) as refused:
        shared_data_from_env()
    assert "GPUWS_SHARED_DATA" in str(refused.value)
    assert message in str(refused.value)


@pytest.mark.parametrize(
    "value, ok",
    [
        ("", True),  # the default, gpuws-home-{username}
        ("lab-{username}-home", True),
        ("{prefix}-home-{username}", True),
        ("team.homes_{username}", True),
        ("shared-home", False),  # one volume for everyone
        ("/home/{username}", False),  # a host folder, not a volume
        ("homes/{username}", False),
        ("home-{raw_username}", False),
        ("home-{username}:/etc", False),
        ("-home-{username}", False),
    ],
)
def test_home_volume_template(monkeypatch, value, ok):
    monkeypatch.setenv("GPUWS_HOME_VOLUME", value)
    if ok:
        assert "{username}" in home_volume_from_env()
    else:
        with pytest.raises(ConfigError, match="GPUWS_HOME_VOLUME"):
            home_volume_from_env()


def test_secret_file_is_made_once_private_and_kept(tmp_path):
    path = tmp_path / "proxy_auth_token"
    first = secret_file(str(path))
    assert len(first) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret_file(str(path)) == first
    path.write_text("set-by-admin\n")
    assert secret_file(str(path)) == "set-by-admin"


def test_unset_empty_env_only_touches_empty_names_with_the_prefixes(monkeypatch):
    monkeypatch.setenv("OAUTH2_USERNAME_KEY", "")
    monkeypatch.setenv("OAUTH_CLIENT_ID", "abc")
    monkeypatch.setenv("LOGIN_SERVICE", "")
    monkeypatch.setenv("GPUWS_TEST_EMPTY", "")
    unset_empty_env("OAUTH", "LOGIN_SERVICE")
    assert "OAUTH2_USERNAME_KEY" not in os.environ and "LOGIN_SERVICE" not in os.environ
    assert os.environ["OAUTH_CLIENT_ID"] == "abc"
    assert os.environ["GPUWS_TEST_EMPTY"] == ""
