"""deploy/: what can be checked without a Docker engine or a cluster.

- the YAML parses (compose file, Kubernetes manifest, alert rules);
- the Dockerfile installs with the README's install command and serves with
  flags the CLI has; the config path is the same in the Dockerfile, the compose
  file and the Kubernetes manifest, and the configs there are valid;
- the Kubernetes sidecar has its probes on the right paths and ports,
  resources, a non-root user matching the image's, and time to drain;
- the image's entrypoint works when run directly on this machine: the
  Dockerfile's ENTRYPOINT + CMD (with a local config file and a free port),
  its HEALTHCHECK command, the example app through it, and SIGTERM exiting 0.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from ctxwarden.__main__ import build_parser
from ctxwarden.config import parse_config
from tests.servers import REPO_ROOT, ctxwarden_command, free_port, wait_for_port

DEPLOY = REPO_ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "kubernetes" / "sidecar.yaml"
DEPLOY_CONFIG = DEPLOY / "config" / "performance.xml"
EXAMPLE_APP = DEPLOY / "example-app" / "app.py"
README = REPO_ROOT / "README.md"


# --------------------------------------------------------------------------- parsing helpers


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, rest = current.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            current = ""
    return instructions


def dockerfile(keyword: str) -> list[str]:
    return [args for kw, args in dockerfile_instructions() if kw == keyword]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def image_command() -> list[str]:
    """What the container runs: ENTRYPOINT + CMD, both in exec form."""
    (entrypoint,), (cmd,) = dockerfile("ENTRYPOINT"), dockerfile("CMD")
    return exec_form(entrypoint) + exec_form(cmd)


def healthcheck_command() -> list[str]:
    (args,) = dockerfile("HEALTHCHECK")
    return exec_form(args[args.index("CMD ") + 4:])


def image_config_path() -> str:
    command = image_command()
    return command[command.index("--config") + 1]


def readme_install_command() -> str:
    """The README's install-and-serve command, without its final `ctxwarden serve`."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    serve = next(b.strip() for b in blocks if "ctxwarden serve" in b)
    install, _, run = serve.rpartition(" && ")
    assert run.endswith("ctxwarden serve"), serve
    return install


def k8s_documents() -> list[dict]:
    return [d for d in yaml.safe_load_all(K8S.read_text()) if d]


def k8s(kind: str) -> dict:
    (doc,) = [d for d in k8s_documents() if d["kind"] == kind]
    return doc


def pod_spec() -> dict:
    return k8s("Deployment")["spec"]["template"]["spec"]


def sidecar() -> dict:
    """ctxwarden: a native sidecar, an init container that keeps running."""
    (container,) = [c for c in pod_spec()["initContainers"] if c["name"] == "ctxwarden"]
    return container


def effective(xml: str | bytes):
    return dataclasses.replace(parse_config(xml), source="")


# --------------------------------------------------------------------------- YAML


def test_yaml_files_parse():
    for path in [COMPOSE, K8S, *sorted((DEPLOY / "prometheus").glob("*.yml"))]:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), path
    assert {d["kind"] for d in k8s_documents()} == {"ConfigMap", "Deployment"}
    for doc in k8s_documents():
        assert doc["apiVersion"] and doc["metadata"]["name"]


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_base_user_and_healthcheck():
    assert dockerfile("FROM") == ["python:3.11-slim AS build", "python:3.11-slim"]
    (user,) = dockerfile("USER")
    assert user.split(":")[0] not in ("root", "0")
    assert "10001" in user
    assert "EXPOSE" in dict(dockerfile_instructions()) and dockerfile("EXPOSE") == ["8788"]
    check = healthcheck_command()
    assert check[:2] == ["python", "-c"] and "/_ctxwarden/health" in check[2] and "urllib" in check[2]


def test_dockerfile_builds_a_pinned_regular_install_in_a_first_stage():
    stages = " ".join(f"{kw} {args}" for kw, args in dockerfile_instructions()).split("FROM ")[1:]
    build, final = stages
    # the first stage: a regular install of the package, with the constraints file
    (install,) = [args for kw, args in dockerfile_instructions() if kw == "RUN" and "pip install" in args]
    assert install in build and " -e " not in f" {install} " and "--editable" not in install
    assert install.endswith(" --constraint constraints.txt .")
    copied = {src for args in dockerfile("COPY") if "--from" not in args for src in args.split()[:-1]}
    assert {"pyproject.toml", "README.md", "LICENSE", "proxy", "deploy/constraints.txt"} <= copied
    for src in copied:
        assert (REPO_ROOT / src).exists(), f"COPY {src}: not in the build context (the repository root)"
    # the final stage: the venv only, on PATH, so `ctxwarden` resolves to it
    venv = install.split("python3 -m venv ", 1)[1].split()[0]
    assert f"COPY --from=build {venv} {venv}" in final
    assert "pip install" not in final
    assert any(args.startswith(f"PATH={venv}/bin:") for args in dockerfile("ENV"))


def _runtime_closure() -> set[str]:
    """The distributions `pip install .` brings, from the installed metadata."""
    from importlib.metadata import PackageNotFoundError, requires
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: set[str] = set()
    todo = [("ctxwarden", frozenset())]
    while todo:
        name, extras = todo.pop()
        try:
            wanted = requires(name) or []
        except PackageNotFoundError:
            continue
        for text in wanted:
            req = Requirement(text)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
                continue
            key = canonicalize_name(req.name)
            if key not in found:
                found.add(key)
                todo.append((req.name, frozenset(req.extras)))
            elif req.extras:
                todo.append((req.name, frozenset(req.extras)))
    return found


def test_constraints_pin_every_runtime_dependency():
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version.strip(), f"not pinned: {line}"
            pins[canonicalize_name(name)] = version
    missing = _runtime_closure() - set(pins)
    assert not missing, f"deploy/constraints.txt does not pin {sorted(missing)}"


def test_license_file_matches_pyproject():
    import tomllib

    license_text = (REPO_ROOT / "LICENSE").read_text()
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["license"]["text"]
    assert declared == "MIT" and license_text.startswith("MIT License\n")


def test_dockerfile_serves_with_the_cli_flags():
    command = image_command()
    assert command[0] == "ctxwarden"
    args = build_parser().parse_args(command[1:])
    assert args.command == "serve"
    assert args.config == "/etc/ctxwarden/performance.xml"
    assert args.host == "0.0.0.0" and args.port == 8788
    synopsis = next(line for line in README.read_text().splitlines() if line.startswith("- `ctxwarden serve"))
    for flag in (a for a in command[1:] if a.startswith("--")):
        assert flag in synopsis, f"{flag} is not in the README's `ctxwarden serve` synopsis"


# --------------------------------------------------------------------------- one config path, valid configs


def test_config_path_is_the_same_in_dockerfile_compose_and_kubernetes():
    path = Path(image_config_path())
    # Kubernetes: the ConfigMap, as a folder, at the path's directory, with the file as a key.
    (mount,) = [m for m in sidecar()["volumeMounts"] if m["name"] == "ctxwarden-config"]
    assert mount["mountPath"] == str(path.parent) and mount.get("readOnly") is True
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates (no hot reload)"
    (volume,) = [v for v in pod_spec()["volumes"] if v["name"] == "ctxwarden-config"]
    configmap = k8s("ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert path.name in configmap["data"]
    assert sidecar()["args"] == image_command()[1:], "the sidecar runs the image's command"
    # Compose: the config folder at the same directory.
    service = yaml.safe_load(COMPOSE.read_text())["services"]["ctxwarden"]
    targets = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    assert str(path.parent) in targets
    assert (DEPLOY / targets[str(path.parent)] / path.name).resolve() == DEPLOY_CONFIG.resolve()


def test_shipped_configs_are_valid_and_agree():
    from_file = effective(DEPLOY_CONFIG.read_bytes())
    from_configmap = effective(k8s("ConfigMap")["data"]["performance.xml"])
    assert from_configmap == from_file, "the ConfigMap and deploy/config/performance.xml differ"
    assert from_file.admin.token_env == "CTXWARDEN_ADMIN_TOKEN"
    assert from_file.server.grace_period < pod_spec()["terminationGracePeriodSeconds"]


def test_the_documented_redis_switch_is_valid():
    """deploy/config/performance.xml carries `<cache backend="redis" ...>` commented
    out; uncommented (as the comment says) it must load, with the URL the compose
    file gives the sidecar."""
    text = DEPLOY_CONFIG.read_text()
    line = next(l.strip() for l in text.splitlines() if l.strip().startswith("<cache "))
    assert text.count("<upstreams>") == 1
    config = parse_config(text.replace("<upstreams>", line + "\n  <upstreams>"))
    assert config.cache.backend == "redis"
    env = yaml.safe_load(COMPOSE.read_text())["services"]["ctxwarden"]["environment"]
    assert env[config.cache.redis_url_env].startswith("redis://redis:")


# --------------------------------------------------------------------------- compose


def test_compose_app_talks_to_the_sidecar():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    app, proxy = services["app"], services["ctxwarden"]
    port = image_command()[image_command().index("--port") + 1]
    assert app["environment"]["OPENAI_BASE_URL"] == f"http://ctxwarden:{port}/v1"
    assert app["depends_on"]["ctxwarden"]["condition"] == "service_healthy"
    assert "/app/app.py" in " ".join(app["command"]) and "openai" in " ".join(app["command"])
    assert (DEPLOY / proxy["build"]["context"] / proxy["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert services["redis"]["profiles"] == ["redis"], "Redis is optional"
    assert "profiles" not in app and "profiles" not in proxy
    grace = effective(DEPLOY_CONFIG.read_bytes()).server.grace_period
    assert int(proxy["stop_grace_period"].rstrip("s")) > grace
    # no admin token, no start: `${VAR:?message}` makes compose refuse to run
    assert re.fullmatch(r"\$\{CTXWARDEN_ADMIN_TOKEN:\?[^}]+\}", proxy["environment"]["CTXWARDEN_ADMIN_TOKEN"])


# --------------------------------------------------------------------------- Kubernetes


def test_kubernetes_sidecar_probes_resources_and_security():
    container = sidecar()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"ctxwarden": 8788}
    probes = {kind: container[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"]["path"] == "/_ctxwarden/ready"
    assert probes["livenessProbe"]["path"] == "/_ctxwarden/health"
    assert probes["startupProbe"]["path"] == "/_ctxwarden/health"
    assert all(p["port"] in ("ctxwarden", 8788) for p in probes.values())
    for c in pod_spec()["containers"] + pod_spec()["initContainers"]:
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], c["name"]
        assert c["resources"]["limits"]["memory"], c["name"]
    (user,) = dockerfile("USER")
    assert container["securityContext"]["runAsUser"] == int(user.split(":")[0])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec()["securityContext"]["runAsNonRoot"] is True
    # A native sidecar: the app starts once its startup probe passes and it is
    # stopped after the app, so it needs no preStop delay; its grace period
    # fits in the pod's.
    assert container["restartPolicy"] == "Always"
    assert "lifecycle" not in container
    assert [c["name"] for c in pod_spec()["containers"]] == ["app"]
    grace = effective(k8s("ConfigMap")["data"]["performance.xml"]).server.grace_period
    assert grace < pod_spec()["terminationGracePeriodSeconds"]
    # The app talks to the sidecar on localhost, on the port it listens on.
    (app,) = [c for c in pod_spec()["containers"] if c["name"] == "app"]
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:8788/v1"
    # The admin token comes from a Secret that may be absent.
    (token,) = [e for e in container["env"] if e["name"] == "CTXWARDEN_ADMIN_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"]["optional"] is True


# --------------------------------------------------------------------------- the entrypoint, run here


@pytest.fixture
def local_config(tmp_path, fake_upstream_server) -> Path:
    """deploy/config/performance.xml with its upstreams pointed at the fake."""
    text = DEPLOY_CONFIG.read_text()
    text = re.sub(r'base_url="https://api\.(openai|anthropic)\.com"', f'base_url="{fake_upstream_server.url}"', text)
    path = tmp_path / "performance.xml"
    path.write_text(text)
    return path


def test_the_image_entrypoint_runs_here(local_config, upstream):
    port = free_port()
    command = image_command()
    command[command.index("--config") + 1] = str(local_config)
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    assert command[0] == "ctxwarden"
    argv = ctxwarden_command() + command[1:]
    env = {**os.environ, "CTXWARDEN_ADMIN_TOKEN": "deploy-test-token"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        wait_for_port(port, proc=proc, timeout=20)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/_ctxwarden/health", timeout=5).json()["status"] == "ok"
        assert httpx.get(url + "/_ctxwarden/ready", timeout=5).status_code == 200
        assert httpx.get(url + "/metrics", timeout=5).status_code == 401, "admin token from the environment"

        # The image's HEALTHCHECK, run with this machine's Python.
        health = healthcheck_command()
        check_env = {**os.environ, "CTXWARDEN_HEALTH_URL": url + "/_ctxwarden/health"}
        ok = subprocess.run([sys.executable, *health[1:]], env=check_env, capture_output=True, timeout=15)
        assert ok.returncode == 0, ok.stderr
        dead = {**os.environ, "CTXWARDEN_HEALTH_URL": f"http://127.0.0.1:{free_port()}/_ctxwarden/health"}
        assert subprocess.run([sys.executable, *health[1:]], env=dead, capture_output=True, timeout=15).returncode != 0

        # The example app, through the sidecar, with the official SDK.
        app = subprocess.run([sys.executable, str(EXAMPLE_APP), "--once"], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "OPENAI_BASE_URL": url + "/v1", "OPENAI_API_KEY": "sk-deploy-test"})
        assert app.returncode == 0, app.stderr
        assert re.search(r"input tokens \d+ -> \d+", app.stdout), app.stdout
        assert upstream.recorder.last.header("authorization") == "Bearer sk-deploy-test"

        proc.send_signal(signal.SIGTERM)  # the image's STOPSIGNAL
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate(timeout=10)[0]
    assert "deploy-test-token" not in out and "sk-deploy-test" not in out


def test_every_source_package_is_in_the_wheel():
    # pyproject lists the packages by hand (the source folder is not named like
    # the import): a subpackage missing there is missing from the image
    import tomllib

    listed = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    source = REPO_ROOT / "proxy"
    found = {".".join(("ctxwarden",) + init.parent.relative_to(source).parts)
             for init in source.rglob("__init__.py")}
    assert found == listed, f"pyproject.toml [tool.setuptools] packages: missing {sorted(found - listed)}, " \
                            f"stale {sorted(listed - found)}"
