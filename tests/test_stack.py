"""The production stack (docker-compose.yml), proven without Docker.

Docker cannot run on CI, so this file proves the stack two ways:

1. structure: docker-compose.yml, .env.example, Dockerfile and .dockerignore are parsed and
   checked (pinned images, loopback-only ports, healthchecks, named volumes, no inline secrets,
   allowed Host headers, the MLflow image matching the installed mlflow);
2. behaviour: the mlflow service's *exact* command line and environment, taken from the
   compose file with only the container-specific values mapped (database host, artifact
   volume, bind address, port), serve a real PostgreSQL cluster, and a gradwatch training
   loop runs through it end to end. The compose healthchecks run against it as written.

    python -m pytest -q tests/test_stack.py
"""

from __future__ import annotations

import http.client
import importlib.metadata
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.mlflow_server import free_port
from tests.postgres import PostgresCluster, PostgresUnavailable, find_postgres_bin

REPO = Path(__file__).resolve().parent.parent
COMPOSE_PATH = REPO / "docker-compose.yml"
ENV_EXAMPLE_PATH = REPO / ".env.example"
DOCKERFILE_PATH = REPO / "Dockerfile"
DOCKERIGNORE_PATH = REPO / ".dockerignore"

SERVICES = ("postgres", "mlflow", "gradwatch-monitor")
# Names of keys whose values must come from the environment, never be written inline.
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|API_?KEY|CREDENTIAL", re.IGNORECASE)


# -- compose-file helpers ---------------------------------------------------------------

# $$ | ${NAME[:-|-|:?|?]word} | $NAME, as in the Compose specification's interpolation.
_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<word>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Expand ``text`` as docker compose would with ``env`` as its .env file."""

    def expand(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, word = match["op"], match["word"] or ""
        value = env.get(name)
        unset_or_empty = not value if op and op.startswith(":") else value is None
        if op in (":-", "-"):
            return word if unset_or_empty else value
        if op in (":?", "?"):
            if unset_or_empty:
                raise KeyError(f"compose requires {name}: {word}")
            return value
        if op in (":+", "+"):
            return "" if unset_or_empty else word
        return value or ""

    return _VAR.sub(expand, text)


def variables_used(text: str) -> set[str]:
    return {m["braced"] or m["bare"] for m in _VAR.finditer(text) if not m["escaped"]}


def resolve(node, env: Mapping[str, str]):
    """Interpolate every string in a parsed compose document."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    return node


def strings(node) -> Iterator[tuple[str, str]]:
    """Yield ``(key, string)`` for every string in the document (key of the nearest mapping)."""
    stack = [("", node)]
    while stack:
        key, item = stack.pop()
        if isinstance(item, str):
            yield key, item
        elif isinstance(item, list):
            stack.extend((key, child) for child in item)
        elif isinstance(item, dict):
            stack.extend((str(k), v) for k, v in item.items())


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: expected KEY=VALUE, got {line!r}"
        env[key.strip()] = value.strip().strip("'\"")
    return env


def environment_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...] form
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def option(command: list[str], name: str) -> str:
    """Value of ``--name value`` or ``--name=value`` in an argument list."""
    for i, arg in enumerate(command):
        if arg == name:
            return command[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} missing from {command}")


def replace_option(command: list[str], name: str, expected: str, new: str) -> list[str]:
    """Copy of ``command`` with ``name``'s value ``expected`` replaced by ``new``."""
    assert option(command, name) == expected, f"{name}: expected {expected!r} in the compose file"
    out = list(command)
    for i, arg in enumerate(out):
        if arg == name:
            out[i + 1] = new
        elif arg.startswith(name + "="):
            out[i] = f"{name}={new}"
    return out


def mounts(service: dict) -> list[tuple[str, str, str]]:
    """``(type, source, target)`` for each entry of a service's ``volumes``."""
    out = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            source, _, rest = entry.partition(":")
            target = rest.split(":")[0]
            kind = "bind" if source.startswith((".", "/", "~", "$")) else "volume"
            out.append((kind, source, target))
        else:
            out.append((entry["type"], entry.get("source", ""), entry["target"]))
    return out


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE_PATH.read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE_PATH)


@pytest.fixture(scope="module")
def compose(raw_compose, env_example) -> dict:
    """The compose file as docker compose would see it with .env copied from .env.example."""
    return resolve(raw_compose, env_example)


# -- 1. structure --------------------------------------------------------------------------


def test_services_present(compose):
    assert set(SERVICES) <= set(compose["services"])


def test_images_pinned(compose):
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image or service.get("build"), f"{name}: neither image nor build"
        if image is None:
            continue
        repo, sep, tag = image.rpartition(":")
        assert sep and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and not tag.startswith("latest"), f"{name}: {image!r} floats"
    postgres_tag = compose["services"]["postgres"]["image"].split(":")[-1]
    assert re.fullmatch(r"\d+(\.\d+)?(-[a-z0-9.]+)?", postgres_tag), postgres_tag


NEWEST_PIN = REPO / "constraints" / "mlflow-newest.txt"
OLDEST_PIN = REPO / "constraints" / "mlflow-oldest.txt"


def pinned(path: Path) -> dict[str, str]:
    """``{package: version}`` of a pip constraints file's ``name==version`` lines."""
    pins = {}
    for line in path.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[name.strip().lower()] = version.strip()
    return pins


def supported_mlflow() -> SpecifierSet:
    """pyproject.toml's MLflow requirement: the supported range."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (requirement,) = [
        Requirement(r) for r in pyproject["project"]["dependencies"] if r.startswith("mlflow")
    ]
    return requirement.specifier


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """The Dockerfile's instructions by stage name (the unnamed last stage is ``""``)."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    text = DOCKERFILE_PATH.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or " " not in line:
            continue
        op, arg = line.split(None, 1)
        if op.upper() == "FROM":
            name = arg.split(" AS ")[1].strip() if " AS " in arg else ""
            current = stages.setdefault(name, [])
        current.append((op.upper(), arg))
    return stages


def test_mlflow_image_is_built_from_the_tested_pin(compose):
    # By construction: the server image installs MLflow under the very constraints file CI
    # installs with, so a new MLflow release changes neither until the pin moves.
    build = compose["services"]["mlflow"]["build"]
    assert (REPO / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE_PATH
    stages = dockerfile_stages()
    for stage in (build["target"], ""):  # the server, and gradwatch's own image
        runs = [arg for op, arg in stages[stage] if op == "RUN" and "pip install" in arg]
        copies = [arg for op, arg in stages[stage] if op == "COPY"]
        assert any("constraints/mlflow-newest.txt" in arg for arg in copies), stage
        assert any(" -c " in arg for arg in runs), f"stage {stage!r} installs without the pin"
    ci = (REPO / ".ci" / "run").read_text()
    assert "-c constraints/mlflow-newest.txt" in ci and "-c constraints/mlflow-oldest.txt" in ci


def test_pins_span_the_supported_range():
    supported = supported_mlflow()
    newest, oldest = pinned(NEWEST_PIN), pinned(OLDEST_PIN)
    assert newest["mlflow"] in supported and oldest["mlflow"] in supported
    # The oldest pin is the range's lower bound, so "supported" means "tested".
    assert supported.filter([oldest["mlflow"]]) and f">={oldest['mlflow']}" in str(supported)
    for pins in (newest, oldest):  # MLflow's own parts move together
        assert pins.get("mlflow-skinny") == pins["mlflow"]


def test_installed_mlflow_is_in_the_supported_range():
    version = importlib.metadata.version("mlflow")
    assert version in supported_mlflow(), (
        f"mlflow {version} is outside pyproject.toml's range {supported_mlflow()}; install "
        f"with `-c {NEWEST_PIN.relative_to(REPO)}`"
    )


def test_postgres_not_published(compose):
    postgres = compose["services"]["postgres"]
    assert not postgres.get("ports"), "the database must stay on the compose network"
    assert postgres.get("network_mode") != "host"


def test_published_ports_bind_loopback(compose):
    published = 0
    for name, service in compose["services"].items():
        assert service.get("network_mode") != "host", name
        for port in service.get("ports") or []:
            published += 1
            if isinstance(port, dict):
                host_ip = port.get("host_ip")
            else:
                parts = str(port).split(":")
                host_ip = parts[0] if len(parts) == 3 else None
            assert host_ip == "127.0.0.1", f"{name}: port {port!r} is not bound to 127.0.0.1"
    assert compose["services"]["mlflow"].get("ports"), "the tracking server must be published"
    assert published >= 1


def test_healthchecks_and_start_order(compose):
    services = compose["services"]
    pg_check = " ".join(services["postgres"]["healthcheck"]["test"])
    assert "pg_isready" in pg_check
    mlflow_check = " ".join(services["mlflow"]["healthcheck"]["test"])
    assert "/health" in mlflow_check
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    monitor_deps = services["gradwatch-monitor"]["depends_on"]
    assert monitor_deps["mlflow"]["condition"] == "service_healthy"


def test_data_lives_on_named_volumes(compose):
    named = set(compose.get("volumes") or {})
    services = compose["services"]

    def volume_for(service: str, target: str) -> str:
        for kind, source, mount_target in mounts(services[service]):
            if mount_target == target:
                assert kind == "volume", f"{service}:{target} should be a named volume"
                return source
        raise AssertionError(f"{service}: nothing mounted at {target}")

    assert volume_for("postgres", "/var/lib/postgresql/data") in named
    artifacts = option(services["mlflow"]["command"], "--artifacts-destination")
    assert volume_for("mlflow", artifacts) in named


def test_mlflow_server_command(compose):
    command = compose["services"]["mlflow"]["command"]
    assert isinstance(command, list), "keep the command a list: the stack test parses it"
    assert command[:2] == ["mlflow", "server"]
    store = urlsplit(option(command, "--backend-store-uri"))
    assert store.scheme == "postgresql+psycopg2"
    assert (store.hostname, store.port) == ("postgres", 5432)
    assert store.password is None, "the password comes from PGPASSWORD, not the URI"
    assert option(command, "--workers") == "1"
    assert option(command, "--host") == "0.0.0.0"
    env = environment_of(compose["services"]["mlflow"])
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_allowed_hosts_cover_every_client(compose):
    services = compose["services"]
    allowed = option(services["mlflow"]["command"], "--allowed-hosts").split(",")
    port = option(services["mlflow"]["command"], "--port")
    # Containers address the server by its service name; the check is on the exact Host header.
    assert "mlflow" in allowed and f"mlflow:{port}" in allowed
    for entry in services["mlflow"]["ports"]:
        host_ip, host_port, _ = str(entry).split(":")
        assert f"{host_ip}:{host_port}" in allowed
        assert f"localhost:{host_port}" in allowed
    monitor_uri = environment_of(services["gradwatch-monitor"])["MLFLOW_TRACKING_URI"]
    assert urlsplit(monitor_uri).netloc in allowed


def test_monitor_service(compose):
    monitor = compose["services"]["gradwatch-monitor"]
    build = monitor["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (REPO / context / dockerfile).resolve() == DOCKERFILE_PATH
    command = monitor["command"]
    assert command[0] == "monitor"
    rules = option(command, "--rules")
    assert option(command, "--experiment")
    assert rules in [target for _, _, target in mounts(monitor)]
    assert environment_of(monitor)["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_no_inline_secrets(raw_compose):
    # Resolve every ${VAR} to a marker: whatever is not a marker was written inline.
    used = variables_used("\n".join(value for _, value in strings(raw_compose)))
    marked = resolve(raw_compose, {name: f"@@{name}@@" for name in used})
    for key, value in strings(marked):
        if SECRET_KEY.search(key):
            assert re.fullmatch(r"@@\w+@@", value), f"{key} is set inline: {value!r}"
        for url in re.findall(r"[a-z0-9+.-]+://[^\s,'\"]+", value):
            password = urlsplit(url).password
            assert password is None or re.fullmatch(r"@@\w+@@", password), f"inline: {url}"


def test_env_example_lists_every_variable(raw_compose, env_example):
    used = variables_used("\n".join(value for _, value in strings(raw_compose)))
    assert used, "expected ${VAR} references in docker-compose.yml"
    missing = sorted(used - set(env_example))
    assert not missing, f".env.example lacks {missing}"


def test_env_file_is_git_ignored():
    ignored = (REPO / ".gitignore").read_text().split()
    assert ".env" in ignored


def test_dockerfile():
    lines = [
        line.strip()
        for line in DOCKERFILE_PATH.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    instructions = [
        (line.split()[0].upper(), line.split(None, 1)[1]) for line in lines if " " in line
    ]
    froms = [arg for op, arg in instructions if op == "FROM"]
    assert froms and froms[-1].startswith("python:3.11-slim")
    assert any(
        op == "RUN" and "pip install" in arg and arg.split("&&")[0].strip().endswith(" .")
        for op, arg in instructions
    )
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    entrypoints = [arg for op, arg in instructions if op == "ENTRYPOINT"]
    assert entrypoints and yaml.safe_load(entrypoints[-1]) == ["gradwatch"]
    # Everything COPY'd must exist and survive .dockerignore, or `docker build` fails.
    ignore = DOCKERIGNORE_PATH.read_text().split()
    for op, arg in instructions:
        if op != "COPY":
            continue
        for source in shlex.split(arg)[:-1]:
            assert (REPO / source).exists(), f"Dockerfile copies {source}, which does not exist"
            kept = [f"!{source}", f"!{source}/"] + [
                f"!{p.as_posix()}/" for p in Path(source).parents
            ]
            assert set(kept) & set(ignore), f".dockerignore drops {source}"


# -- 2. the mlflow service's command line against a real PostgreSQL ----------------------------


def _server_command(compose: dict, pg: PostgresCluster, artifacts: Path, port: int) -> list[str]:
    """The compose command with only container-specific values mapped to this machine."""
    command = list(compose["services"]["mlflow"]["command"])
    store = option(command, "--backend-store-uri")
    parts = urlsplit(store)
    assert (parts.hostname, parts.port) == ("postgres", 5432)
    netloc = parts.netloc.replace("postgres:5432", f"127.0.0.1:{pg.port}")
    local_store = urlunsplit(parts._replace(netloc=netloc))
    command = replace_option(command, "--backend-store-uri", store, local_store)
    command = replace_option(command, "--artifacts-destination", "/mlartifacts", str(artifacts))
    command = replace_option(command, "--host", "0.0.0.0", "127.0.0.1")
    command = replace_option(command, "--port", "5000", str(port))
    # Host-side clients reach the published port 5000; here that port is `port`. The
    # in-network forms (mlflow:5000, mlflow) stay exactly as written.
    allowed = option(command, "--allowed-hosts")
    local = {f"{name}:5000": f"{name}:{port}" for name in ("127.0.0.1", "localhost")}
    assert set(local) <= set(allowed.split(","))
    mapped = ",".join(local.get(entry, entry) for entry in allowed.split(","))
    command = replace_option(command, "--allowed-hosts", allowed, mapped)
    assert command[0] == "mlflow"
    # `python -m mlflow` is the installed package's `mlflow` console script.
    return [sys.executable, "-m", "mlflow", *command[1:]]


def _healthcheck_argv(service: dict) -> list[str]:
    test = service["healthcheck"]["test"]
    if test[0] == "CMD-SHELL":
        return ["sh", "-c", test[1]]
    assert test[0] == "CMD"
    return list(test[1:])


def _request(port: int, path: str, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _wait_healthy(proc: subprocess.Popen, uri: str, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                if resp.read().strip() == b"OK":
                    return
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"mlflow server not healthy after {timeout}s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def stack(compose, env_example, tmp_path_factory):
    """PostgreSQL + the compose file's mlflow server, as a dict of what the test needs."""
    try:
        find_postgres_bin()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("stack")
    user, password, db = (
        env_example[k] for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")
    )
    # Password logins over TCP, as the official postgres image sets up.
    with PostgresCluster(root, require_password=True) as pg:
        pg.create_database(db, owner=user, password=password)
        artifacts = root / "mlartifacts"
        port = free_port()
        command = _server_command(compose, pg, artifacts, port)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PG"))}
        env.update(environment_of(compose["services"]["mlflow"]))
        assert env["PGPASSWORD"] == password, "the server gets the database password from .env"
        log = root / "mlflow-server.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        uri = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(proc, uri, log)
            yield {
                "pg": pg,
                "uri": uri,
                "port": port,
                "artifacts": artifacts,
                "db": (db, user, password),
                "command": command,
            }
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)


def test_compose_healthchecks_pass_against_the_stack(compose, env_example, stack):
    pg = stack["pg"]
    services = compose["services"]
    # postgres: the CMD-SHELL line as written; in the container libpq finds the server itself.
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(pg.port))
    env["PATH"] = f"{pg.bin}{os.pathsep}{env['PATH']}"
    env.update({k: env_example[k] for k in ("POSTGRES_USER", "POSTGRES_DB")})
    result = subprocess.run(
        _healthcheck_argv(services["postgres"]), env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # mlflow: the python one-liner, pointed at this server's port instead of 5000.
    argv = [
        arg.replace("127.0.0.1:5000", f"127.0.0.1:{stack['port']}")
        for arg in _healthcheck_argv(services["mlflow"])
    ]
    assert argv[0] == "python"
    result = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_host_headers(stack):
    path = "/api/2.0/mlflow/experiments/search?max_results=1"
    port = stack["port"]
    # How the monitor container addresses the server: the entry as written in the compose file.
    assert _request(port, path, "mlflow:5000") == 200
    # How clients on the host address the published port (5000 there, `port` here).
    assert _request(port, path, f"127.0.0.1:{port}") == 200
    assert _request(port, path, f"localhost:{port}") == 200
    # The check is really on: an unknown Host (DNS rebinding) is refused.
    assert _request(port, path, "attacker.example:5000") == 403
    assert _request(port, path, f"mlflow:{port + 1}") == 403


def test_training_loop_end_to_end(stack, env_example):
    import mlflow
    import numpy as np
    import psycopg2

    import gradwatch
    from gradwatch.demo import MLP, make_blobs

    steps, lr, batch = 200, 0.2, 64
    X, y = make_blobs(n=512, dim=20, classes=3, seed=3)
    mlp = MLP([20, 16, 3], seed=0)
    params = mlp.params
    rng = np.random.default_rng(0)
    losses = []
    experiment = env_example["GRADWATCH_EXPERIMENT"]  # the one the monitor service watches
    with gradwatch.GradWatch(
        every=50, experiment=experiment, run_name="postgres-stack", tracking_uri=stack["uri"]
    ) as watch:
        for _ in range(steps):
            idx = rng.choice(len(X), size=batch, replace=False)
            xb, yb = X[idx], y[idx]
            loss, grads = mlp.loss_and_grads(params, xb, yb)  # grads keyed "dW1", "db1", ...
            watch.step(
                params,
                grads,
                loss=loss,
                lr=lr,
                loss_fn=lambda p, xb=xb, yb=yb: mlp.loss(p, xb, yb),
            )
            losses.append(loss)
            for name in params:
                params[name] -= lr * grads["d" + name]
    assert losses[-1] < losses[0], "the loop should train"

    client = mlflow.MlflowClient(stack["uri"])
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    runs = [r for r in runs if r.info.run_name == "postgres-stack"]
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    history = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    assert len(history) == steps
    assert len({m.step for m in history}) == steps
    np.testing.assert_allclose([m.value for m in history], losses, rtol=1e-12)
    checks = client.get_metric_history(run.info.run_id, "gradcheck/max_rel_error")
    assert len(checks) >= steps // 50
    passed = client.get_metric_history(run.info.run_id, "gradcheck/passed")
    assert passed and all(m.value == 1.0 for m in passed)

    # The rows are in PostgreSQL, written through the compose command's store URI.
    db, user, password = stack["db"]
    conn = psycopg2.connect(stack["pg"].dsn(db, user=user, password=password))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*), count(DISTINCT step) FROM metrics WHERE run_uuid = %s AND key = %s",
                (run.info.run_id, "loss"),
            )
            assert cur.fetchone() == (steps, steps)
            cur.execute(
                "SELECT count(*) FROM metrics WHERE run_uuid = %s AND key LIKE %s",
                (run.info.run_id, "gradcheck/%"),
            )
            assert cur.fetchone()[0] > 0
            cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (run.info.run_id,))
            assert cur.fetchone() == ("FINISHED",)
    finally:
        conn.close()

    # Proxied artifacts land under --artifacts-destination (the named volume in compose).
    assert list(stack["artifacts"].rglob("checks.jsonl")), "gradwatch/checks.jsonl not stored"


def test_monitor_command_runs_against_the_stack(compose, env_example, stack):
    """The gradwatch-monitor service's command and config, one poll (``--once``) at the server."""
    import mlflow

    client = mlflow.MlflowClient(stack["uri"])
    experiment = env_example["GRADWATCH_EXPERIMENT"]
    if client.get_experiment_by_name(experiment) is None:  # when run without the training test
        client.create_experiment(experiment)
    monitor = compose["services"]["gradwatch-monitor"]
    command = list(monitor["command"])
    rules_target = option(command, "--rules")
    config = next(src for _, src, target in mounts(monitor) if target == rules_target)
    config_path = (REPO / config).resolve()
    assert config_path.is_file(), f"{config} (GRADWATCH_CONFIG) must exist for the stack to start"
    command = replace_option(command, "--rules", rules_target, str(config_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(environment_of(monitor))
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    env["MLFLOW_TRACKING_URI"] = stack["uri"]
    # The image's entrypoint is `gradwatch`, i.e. gradwatch.cli:main.
    argv = [sys.executable, "-c", "from gradwatch.cli import main; main()", *command, "--once"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
