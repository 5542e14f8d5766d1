"""The notebook images' lazy imports (images/notebook-common/gpuws_lazy_imports.py), run for
real in the built images: start-up skips what a server never uses, and code that does use it
still gets the real modules."""

from __future__ import annotations

import json

import docker
import pytest

pytestmark = pytest.mark.docker

HEAVY = ("sqlalchemy", "alembic", "rfc3987_syntax", "jupyterhub.orm")

# Run as a script whose name is the program's, so the image's .pth hook sees a real argv[0].
PROBE = f"""
import json, os, sys

def real(name):
    module = sys.modules.get(name)
    return module is not None and type(module).__name__ != "_Deferred"

import jsonschema
import jupyter_server.serverapp
if sys.argv[0].endswith("jupyterhub-singleuser"):
    import jupyterhub.singleuser
at_start = {{name: real(name) for name in {HEAVY!r}}}
exec(os.environ.get("FIRST_USE", ""))
from jupyterhub.orm import User
checker = jsonschema.Draft7Validator({{"format": "iri"}}, format_checker=jsonschema.FormatChecker())
print(json.dumps({{
    "at_start": at_start,
    "orm_table": User.__tablename__,
    "iri_valid": checker.is_valid("https://example.org/a?b=c"),
    "iri_invalid": checker.is_valid("https://exa mple.org/"),
    "after_use": {{name: real(name) for name in {HEAVY!r}}},
}}))
"""


def _probe(
    client: docker.DockerClient, image: str, program: str, env: dict[str, str] | None = None
) -> dict:
    script = f"/tmp/probe/{program}"
    command = f'mkdir -p /tmp/probe && printf %s "$PROBE" > {script} && exec python {script}'
    output = client.containers.run(
        image,
        ["sh", "-c", command],
        entrypoint=[],
        environment={"PROBE": PROBE, **(env or {})},
        remove=True,
        stderr=True,
    )
    return json.loads(output.decode().strip().splitlines()[-1])


# What a server's code might touch first; each must get the real modules, one copy of each.
FIRST_USES = {
    "orm": "",
    "alembic-submodule": "import alembic.command; assert alembic.command.upgrade",
    "submodule-its-package-imports": (
        "import sqlalchemy.engine as engine\n"
        "assert engine is sys.modules['sqlalchemy.engine'] is sys.modules['sqlalchemy'].engine\n"
        "assert type(engine.__spec__.loader).__name__ == 'SourceFileLoader'"
    ),
}


@pytest.mark.parametrize(
    ("flavor", "first_use"),
    [("cpu", use) for use in FIRST_USES] + [("cuda", "orm")],
)
def test_singleuser_start_defers_hub_modules_until_used(
    docker_client: docker.DockerClient,
    notebook_images: dict[str, str],
    flavor: str,
    first_use: str,
) -> None:
    seen = _probe(
        docker_client,
        notebook_images[flavor],
        "jupyterhub-singleuser",
        {"FIRST_USE": FIRST_USES[first_use]},
    )
    assert seen["at_start"] == dict.fromkeys(HEAVY, False)
    # Using them loads the real modules, transparently.
    assert seen["orm_table"] == "users"
    assert (seen["iri_valid"], seen["iri_invalid"]) == (True, False)
    assert seen["after_use"] == dict.fromkeys(HEAVY, True)


def test_other_jupyter_programs_defer_only_the_iri_parser(
    docker_client: docker.DockerClient, notebook_images: dict[str, str]
) -> None:
    seen = _probe(docker_client, notebook_images["cpu"], "jupyter-server")
    assert seen["at_start"]["rfc3987_syntax"] is False
    assert (seen["iri_valid"], seen["iri_invalid"]) == (True, False)


@pytest.mark.parametrize(
    ("program", "env"),
    [("kernel-probe", {}), ("jupyterhub-singleuser", {"GPUWS_LAZY_IMPORTS": "0"})],
    ids=["not-a-jupyter-program", "switched-off"],
)
def test_lazy_imports_stay_out_of_the_way(
    docker_client: docker.DockerClient,
    notebook_images: dict[str, str],
    program: str,
    env: dict[str, str],
) -> None:
    seen = _probe(docker_client, notebook_images["cpu"], program, env)
    assert seen["at_start"]["rfc3987_syntax"] is True
    assert (seen["iri_valid"], seen["iri_invalid"]) == (True, False)
