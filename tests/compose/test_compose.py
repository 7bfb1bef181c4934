"""Static checks of docker-compose.yaml, the Dockerfile and the container scripts.

There is no Docker engine on the build machines, so the stack is checked without running it:
the file parses; every service of the official Airflow 3 compose file is present; images and
versions are pinned and agree with requirements.txt; bind-mounted paths exist; every ``${VAR}``
is defined in .env.example or has a default; every ``AIRFLOW_CONN_*`` parses as an Airflow
Connection; and each service's command (and each ``airflow`` command in the healthchecks and in
docker/airflow-init.sh) is accepted by the real ``airflow`` CLI of the pinned version. The
emulators profile's wiring is run for real with a stand-in emulator process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
INIT_SCRIPT = ROOT / "docker" / "airflow-init.sh"
AIRFLOW_BIN = Path(sys.executable).with_name("airflow")

# Services of the official Airflow 3.x docker-compose.yaml (reference/airflow.md section 3).
OFFICIAL_SERVICES = {
    "postgres",
    "redis",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
    "airflow-cli",
    "flower",
}
ALWAYS_ON = OFFICIAL_SERVICES - {"airflow-cli", "flower"}
EMULATOR_SERVICES = {"graph-emulator": "graph", "threecx-emulator": "threecx"}
# Bind-mount sources the containers create at runtime (airflow-init makes and chowns them).
RUNTIME_DIRS = {"logs", "config"}
# Where the Dockerfile copies the repository's docker/ folder.
IMAGE_DOCKER_DIR = "/opt/m365-3cx/docker/"
REQUIRED_SECRETS = (
    "FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW_ADMIN_PASSWORD",
    "STAGING_DB_PASSWORD",
    "M365_GRAPH_CLIENT_SECRET",
    "THREECX_CLIENT_SECRET",
)


# --- helpers --------------------------------------------------------------------------------


def load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as Compose reads a .env file (comments, optional quotes)."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {raw!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})")


def variables(text: str) -> list[tuple[str, str | None, str]]:
    """(name, operator, argument) of every ``${...}`` in ``text`` (``$$`` is an escape)."""
    return [(m["name"], m["op"], m["arg"] or "") for m in _VAR.finditer(text) if m["name"]]


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose variable interpolation (``${V}``, ``:-``, ``-``, ``:?``, ``?``, ``:+``, ``$$``)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def repl(m: re.Match[str]) -> str:
        if not m["name"]:
            return "$"
        name, op, arg = m["name"], m["op"], m["arg"] or ""
        current = env.get(name)
        if op in (":-", "-"):
            return current if (current if op == ":-" else current is not None) else arg
        if op in (":?", "?"):
            if current is None or (op == ":?" and current == ""):
                raise KeyError(f"required variable {name} is not set: {arg}")
            return current
        if op in (":+", "+"):
            return arg if (current if op == ":+" else current is not None) else ""
        return current or ""

    return _VAR.sub(repl, value)


@pytest.fixture(scope="module")
def raw_text() -> str:
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def compose(raw_text: str) -> dict[str, Any]:
    data = yaml.safe_load(raw_text)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def demo_env(env_example: dict[str, str]) -> dict[str, str]:
    """.env.example with the secrets an operator must fill in set to stand-in values."""
    env = dict(env_example)
    for key in REQUIRED_SECRETS:
        env[key] = env[key] or f"stand-in-{key.lower()}"
    return env


@pytest.fixture(scope="module")
def resolved(compose: dict[str, Any], demo_env: dict[str, str]) -> dict[str, Any]:
    return interpolate(compose, demo_env)


def airflow_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services built on x-airflow-common (they carry its Airflow environment)."""
    return {
        name: svc
        for name, svc in compose["services"].items()
        if "AIRFLOW__CORE__EXECUTOR" in (svc.get("environment") or {})
    }


# --- structure --------------------------------------------------------------------------------


def test_compose_parses_with_services_and_volumes(compose: dict[str, Any]) -> None:
    assert isinstance(compose["services"], dict)
    assert isinstance(compose["volumes"], dict)
    assert compose["name"] == "m365-3cx-sync"


def test_every_official_service_is_present(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= OFFICIAL_SERVICES, OFFICIAL_SERVICES - set(services)
    for name in ALWAYS_ON:
        assert not services[name].get("profiles"), f"{name} must run without a profile"
    assert services["flower"]["profiles"] == ["flower"]
    assert services["airflow-cli"]["profiles"] == ["debug"]
    for name in EMULATOR_SERVICES:
        assert services[name]["profiles"] == ["emulators"]


def test_airflow_services_share_one_environment(compose: dict[str, Any]) -> None:
    services = airflow_services(compose)
    assert set(services) >= OFFICIAL_SERVICES - {"postgres", "redis"}
    reference = services["airflow-scheduler"]["environment"]
    for name, svc in services.items():
        env = svc["environment"]
        for key in (
            "AIRFLOW__API_AUTH__JWT_SECRET",
            "AIRFLOW__CORE__FERNET_KEY",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
            "AIRFLOW__CELERY__BROKER_URL",
            "AIRFLOW_CONN_M365_GRAPH",
        ):
            assert env.get(key) == reference[key], f"{name}: {key} differs from the scheduler's"
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert "_PIP_ADDITIONAL_REQUIREMENTS" not in env, f"{name}: use the Dockerfile, not pip at start"
        assert svc["user"] == ("0:0" if name == "airflow-init" else "${AIRFLOW_UID:-50000}:0")


def test_database_urls_name_an_installed_driver(compose: dict[str, Any]) -> None:
    """SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which the image does not install."""
    import importlib.util

    env = airflow_services(compose)["airflow-scheduler"]["environment"]
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
        scheme = env[key].split("://", 1)[0].removeprefix("db+")
        assert scheme == "postgresql+psycopg2", f"{key} must name the psycopg2 driver, got {scheme}"
    assert importlib.util.find_spec("psycopg2") is not None
    assert importlib.util.find_spec("asyncpg") is not None, "Airflow 3.3 opens PostgreSQL with asyncpg too"


def test_jwt_secret_is_required_not_defaulted(compose: dict[str, Any]) -> None:
    value = airflow_services(compose)["airflow-apiserver"]["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert variables(value) == [("AIRFLOW__API_AUTH__JWT_SECRET", ":?", "set AIRFLOW__API_AUTH__JWT_SECRET in .env")]


def test_execution_api_points_at_the_api_server(resolved: dict[str, Any]) -> None:
    api = resolved["services"]["airflow-apiserver"]
    assert any(str(p).endswith(":8080") for p in api["ports"])
    for svc in airflow_services(resolved).values():
        assert (
            svc["environment"]["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        )


def test_dependencies_exist_and_wait_for_init(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if dep in EMULATOR_SERVICES:
                assert cond.get("required") is False, f"{name}: the emulators are optional"
    for name in (
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-worker",
        "airflow-triggerer",
        "flower",
    ):
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"
    assert services["airflow-worker"]["environment"]["DUMB_INIT_SETSID"] == "0"


# --- images and versions ----------------------------------------------------------------------


def _pin(path: Path, package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)$", path.read_text(), re.MULTILINE)
    assert match, f"{path.name} does not pin {package}"
    return match[1]


def test_images_are_pinned(resolved: dict[str, Any]) -> None:
    for name, svc in resolved["services"].items():
        image = svc.get("image")
        assert image, f"{name} has no image"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"


def test_project_image_is_consistent(compose: dict[str, Any], resolved: dict[str, Any]) -> None:
    airflow_version = _pin(ROOT / "requirements.txt", "apache-airflow")
    assert _pin(ROOT / "constraints.txt", "apache-airflow") == airflow_version
    dockerfile = DOCKERFILE.read_text()
    arg_defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.MULTILINE))
    assert arg_defaults["AIRFLOW_VERSION"] == airflow_version
    assert re.search(
        r"^FROM apache/airflow:\$\{AIRFLOW_VERSION\}-python\$\{PYTHON_VERSION\}$", dockerfile, re.MULTILINE
    )
    assert (
        'pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r requirements.txt '
        "-c constraints.txt" in dockerfile
    )
    assert "pip install --no-cache-dir --no-deps ." in dockerfile
    # constraints.txt was frozen on the interpreter the tests run on
    assert arg_defaults["PYTHON_VERSION"] == f"{sys.version_info.major}.{sys.version_info.minor}"

    project_services = {n: s for n, s in resolved["services"].items() if "build" in s}
    assert set(project_services) >= set(airflow_services(compose)) | set(EMULATOR_SERVICES)
    images = {s["image"] for s in project_services.values()}
    assert len(images) == 1, f"project services use different images: {images}"
    assert airflow_version in images.pop()
    for name, svc in project_services.items():
        assert svc["build"]["context"] == "."
        assert svc["build"]["args"] == {
            "AIRFLOW_VERSION": airflow_version,
            "PYTHON_VERSION": arg_defaults["PYTHON_VERSION"],
        }, name


def test_dockerfile_copies_existing_paths() -> None:
    dockerfile = DOCKERFILE.read_text()
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    sources = []
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            parts = [p for p in line.split()[1:] if not p.startswith("--")]
            sources += parts[:-1]
    assert sources, "the Dockerfile copies nothing"
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert src.rstrip("/") not in ignored, f"COPY {src}: excluded by .dockerignore"
    entrypoint = re.search(r'^ENTRYPOINT \["/usr/bin/dumb-init", "--", "(\S+)"\]$', dockerfile, re.MULTILINE)
    assert entrypoint and entrypoint[1].startswith(IMAGE_DOCKER_DIR)
    assert (ROOT / "docker" / entrypoint[1].removeprefix(IMAGE_DOCKER_DIR)).is_file()
    for secret in (".env", ".git", ".venv", "docker/secrets", "tests"):
        assert secret in ignored, f".dockerignore must exclude {secret}"


# --- mounts and files ------------------------------------------------------------------------


def missing_bind_sources(compose_resolved: dict[str, Any], root: Path) -> list[str]:
    """Bind-mount sources that do not exist under ``root`` (runtime dirs excepted)."""
    problems = []
    named = set(compose_resolved.get("volumes") or {})
    for name, svc in compose_resolved["services"].items():
        for volume in svc.get("volumes") or []:
            source, target = volume.split(":")[:2]
            assert target.startswith("/"), f"{name}: {volume!r}"
            if not source.startswith((".", "/")):
                if source not in named:
                    problems.append(f"{name}: named volume {source!r} is not declared")
                continue
            rel = os.path.normpath(source)
            if rel in RUNTIME_DIRS:
                continue
            if not (root / rel).exists():
                problems.append(f"{name}: {source} (mounted at {target}) does not exist")
    return problems


def test_bind_mounts_exist(resolved: dict[str, Any]) -> None:
    assert missing_bind_sources(resolved, ROOT) == []
    mounts = {v.split(":")[1] for v in resolved["services"]["airflow-scheduler"]["volumes"]}
    assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/logs", "/opt/airflow/config"} <= mounts


def test_missing_mount_is_reported(resolved: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(resolved))
    broken["services"]["airflow-scheduler"]["volumes"].append("./dagz:/opt/airflow/dagz")
    assert missing_bind_sources(broken, ROOT) == [
        "airflow-scheduler: ./dagz (mounted at /opt/airflow/dagz) does not exist"
    ]


def test_container_scripts_exist_in_repository(raw_text: str) -> None:
    referenced = set(re.findall(re.escape(IMAGE_DOCKER_DIR) + r"([\w.-]+)", raw_text))
    assert {"airflow-init.sh", "run_emulator.py"} <= referenced
    for name in referenced:
        assert (ROOT / "docker" / name).is_file(), f"docker/{name} is referenced but missing"
    for script in (ROOT / "docker").glob("*.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)


# --- variables and secrets -----------------------------------------------------------------------


def test_every_variable_is_defined_or_defaulted(raw_text: str, env_example: dict[str, str]) -> None:
    undefined = sorted(
        {name for name, op, _ in variables(raw_text) if name not in env_example and op not in (":-", "-")}
    )
    assert undefined == [], f"add to .env.example or give a default: {undefined}"
    required = {name for name, op, _ in variables(raw_text) if op in (":?", "?")}
    assert required <= set(env_example), required - set(env_example)


def test_env_example_holds_no_secrets(env_example: dict[str, str]) -> None:
    for key in REQUIRED_SECRETS:
        assert key in env_example, f".env.example lacks {key}"
        assert env_example[key] == "", f".env.example must leave {key} empty"


def test_compose_refuses_to_start_without_secrets(compose: dict[str, Any], env_example: dict[str, str]) -> None:
    with pytest.raises(KeyError, match=r"FERNET_KEY|JWT_SECRET|PASSWORD"):
        interpolate(compose, env_example)


# --- connections and variables ----------------------------------------------------------------


def _connections(resolved: dict[str, Any]) -> dict[str, Any]:
    from airflow.sdk import Connection

    env = resolved["services"]["airflow-scheduler"]["environment"]
    conns = {}
    for key, value in env.items():
        if key.startswith("AIRFLOW_CONN_"):
            conn_id = key.removeprefix("AIRFLOW_CONN_").lower()
            json.loads(value)  # a JSON document, not a URI
            conns[conn_id] = Connection.from_json(value, conn_id=conn_id)
    return conns


def test_connections_parse(resolved: dict[str, Any]) -> None:
    conns = _connections(resolved)
    assert set(conns) == {"m365_graph", "threecx_xapi", "m365_3cx_staging"}

    graph = conns["m365_graph"]
    assert graph.conn_type == "m365_graph"
    assert graph.login == "00000000-0000-0000-0000-000000000000"
    assert graph.password == "stand-in-m365_graph_client_secret"
    extra = graph.extra_dejson
    assert extra["tenant_id"] == "00000000-0000-0000-0000-000000000000"
    assert extra["authority"] == "https://login.microsoftonline.com"
    assert extra["base_url"] == "https://graph.microsoft.com"
    assert extra["disable_instance_discovery"] is False

    pbx = conns["threecx_xapi"]
    assert pbx.conn_type == "threecx_xapi"
    assert pbx.host == "https://pbx.example.com:5001"
    assert pbx.login == "900"
    assert set(pbx.extra_dejson) == {"ca_bundle"}

    staging = conns["m365_3cx_staging"]
    assert (staging.conn_type, staging.host, staging.port, staging.schema, staging.login) == (
        "postgres",
        "postgres",
        5432,
        "m365_3cx_staging",
        "m365_3cx",
    )
    assert "postgres" in resolved["services"]


def test_graph_connection_with_certificate(compose: dict[str, Any], demo_env: dict[str, str]) -> None:
    env = dict(
        demo_env,
        M365_GRAPH_CLIENT_SECRET="",
        M365_GRAPH_CERTIFICATE_PATH="/opt/airflow/secrets/graph.pem",
        M365_GRAPH_PRIVATE_KEY_PATH="/opt/airflow/secrets/graph.key",
        M365_GRAPH_DISABLE_INSTANCE_DISCOVERY="true",
    )
    graph = _connections(interpolate(compose, env))["m365_graph"]
    assert graph.password in ("", None)
    assert graph.extra_dejson["certificate_path"] == "/opt/airflow/secrets/graph.pem"
    assert graph.extra_dejson["private_key_path"] == "/opt/airflow/secrets/graph.key"
    assert graph.extra_dejson["disable_instance_discovery"] is True
    mounts = interpolate(compose, env)["services"]["airflow-worker"]["volumes"]
    assert "./docker/secrets:/opt/airflow/secrets:ro" in mounts


def test_settings_variable_is_not_hidden_by_the_environment(resolved: dict[str, Any]) -> None:
    """An AIRFLOW_VAR_* value wins over the metadata DB, so UI edits would silently do nothing."""
    for name, svc in resolved["services"].items():
        assert "AIRFLOW_VAR_M365_3CX_SETTINGS" not in (svc.get("environment") or {}), name
    init = resolved["services"]["airflow-init"]["environment"]
    assert isinstance(json.loads(init["M365_3CX_SETTINGS"]), dict)
    assert init["M365_3CX_SETTINGS_RESEED"] == "false"
    workers = [svc for name, svc in resolved["services"].items() if name != "airflow-init"]
    assert all("M365_3CX_SETTINGS" not in (svc.get("environment") or {}) for svc in workers)


def test_airflow_logs_at_info(resolved: dict[str, Any]) -> None:
    for name, svc in airflow_services(resolved).items():
        assert svc["environment"]["AIRFLOW__LOGGING__LOGGING_LEVEL"] == "INFO", name


def test_init_seeds_the_settings_variable_once_in_the_metadata_db() -> None:
    script = INIT_SCRIPT.read_text()
    commands = airflow_argv_from_shell(script)
    assert ["variables", "get", "m365_3cx_settings"] in commands
    seeds = [argv for argv in commands if argv[:2] == ["variables", "set"]]
    assert len(seeds) == 1 and "m365_3cx_settings" in seeds[0]
    # seeded only when missing (or on request), after validating it
    assert 'M365_3CX_SETTINGS_RESEED:-false}" == "true" ]] || ! airflow variables get m365_3cx_settings' in script
    assert script.index("Settings.from_json") < script.index("airflow variables set")
    assert script.index("airflow db migrate") < script.index("airflow variables set")


def test_settings_seed_is_optional(compose: dict[str, Any], demo_env: dict[str, str]) -> None:
    env = {k: v for k, v in demo_env.items() if k != "M365_3CX_SETTINGS"}
    assert interpolate(compose, env)["services"]["airflow-init"]["environment"]["M365_3CX_SETTINGS"] == ""


# --- commands against the real airflow CLI ---------------------------------------------------------

_VALIDATOR = textwrap.dedent("""
    import contextlib, io, json, sys
    from airflow.cli.cli_parser import get_parser

    def words(parser, argv):
        found = []
        for token in argv:
            subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
            if not subs or token not in subs[0].choices:
                break
            found.append(token)
            parser = subs[0].choices[token]
        return found

    out = []
    for argv in json.load(sys.stdin):
        err = io.StringIO()
        ok = True
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                get_parser().parse_args(argv)
        except SystemExit as exc:
            ok = exc.code in (0, None)
        out.append({"argv": argv, "ok": ok, "words": words(get_parser(), argv), "error": err.getvalue()[-400:]})
    print(json.dumps(out))
""")


def _airflow_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update(AIRFLOW_HOME=str(tmp_path), AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__UNIT_TEST_MODE="False")
    return env


def validate_airflow_commands(argvs: list[list[str]], tmp_path: Path) -> dict[tuple[str, ...], dict[str, Any]]:
    """Parse each argv with Airflow's own CLI parser (one process), keyed by argv."""
    proc = subprocess.run(
        [sys.executable, "-c", _VALIDATOR],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        env=_airflow_env(tmp_path),
        timeout=180,
        check=True,
    )
    return {tuple(r["argv"]): r for r in json.loads(proc.stdout.strip().splitlines()[-1])}


def airflow_argv_from_shell(script: str) -> list[list[str]]:
    """The ``airflow ...`` commands of a shell script or CMD-SHELL string, without redirections."""
    lines: list[str] = []
    heredoc_end = None
    for raw in script.replace("\\\n", " ").splitlines():
        if heredoc_end is not None:
            heredoc_end = None if raw.strip() == heredoc_end else heredoc_end
            continue
        if marker := re.search(r"<<-?\s*'?\"?(\w+)", raw):
            heredoc_end = marker[1]
        lines.append(raw)
    found = []
    starts = re.compile(r"^\s*(?:(?:if|!|then|else|do|exec|time)\s+)*airflow\s")
    for line in lines:
        if line.strip().startswith("#"):
            continue
        for segment in re.split(r"&&|\|\||;|\|", line):
            if not starts.match(segment):
                continue
            tokens = shlex.split(re.split(r"\s\d?>", segment, maxsplit=1)[0])
            while tokens[0] != "airflow":
                tokens = tokens[1:]
            found.append(tokens[1:])
    return found


def collect_airflow_commands(resolved: dict[str, Any]) -> dict[str, list[str]]:
    """label -> airflow argv (without the leading ``airflow``) for every place that runs the CLI."""
    commands: dict[str, list[str]] = {}
    for name, svc in airflow_services(resolved).items():
        command = svc.get("command")
        if svc.get("entrypoint"):
            assert name == "airflow-init", f"{name} overrides the image entrypoint"
            assert command == []
        else:
            assert isinstance(command, list) and command, f"{name}: give the command as a list"
            if name == "airflow-cli":
                # As in the official file: a placeholder, replaced by `docker compose run airflow-cli ...`.
                assert command == ["bash", "-c", "airflow"]
            else:
                commands[f"{name} command"] = command
        test = (svc.get("healthcheck") or {}).get("test") or []
        if test and test[0] == "CMD-SHELL":
            for i, argv in enumerate(airflow_argv_from_shell(test[1])):
                commands[f"{name} healthcheck {i}"] = argv
    for i, argv in enumerate(airflow_argv_from_shell(INIT_SCRIPT.read_text())):
        commands[f"airflow-init.sh {i}"] = argv
    return commands


@pytest.fixture(scope="module")
def cli_results(resolved: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("airflow_home")
    commands = collect_airflow_commands(resolved)
    typos = [
        ["celery", "wrker"],
        ["dag-procesor"],
        ["jobs", "check", "--job-type", "DagProcesorJob"],
        ["api-server", "--no-such-flag"],
    ]
    parsed = validate_airflow_commands(list(commands.values()) + typos, tmp)
    return {"commands": commands, "parsed": parsed, "typos": typos, "home": tmp}


def test_service_commands_are_valid_for_airflow(cli_results: dict[str, Any]) -> None:
    commands, parsed = cli_results["commands"], cli_results["parsed"]
    expected = {
        "airflow-apiserver command": ["api-server"],
        "airflow-scheduler command": ["scheduler"],
        "airflow-dag-processor command": ["dag-processor"],
        "airflow-worker command": ["celery", "worker"],
        "airflow-triggerer command": ["triggerer"],
        "flower command": ["celery", "flower"],
    }
    for label, argv in expected.items():
        assert commands[label] == argv
    bad = {label: parsed[tuple(argv)]["error"] for label, argv in commands.items() if not parsed[tuple(argv)]["ok"]}
    assert bad == {}


def test_command_words_have_help(cli_results: dict[str, Any]) -> None:
    """``airflow <words> --help`` of the real CLI exits 0 for each service command (in parallel).

    The healthcheck and init-script commands are checked, options included, by the parser above.
    """
    parsed = cli_results["parsed"]
    words = {
        tuple(parsed[tuple(argv)]["words"])
        for label, argv in cli_results["commands"].items()
        if label.endswith(" command")
    }
    assert words == {
        ("api-server",),
        ("scheduler",),
        ("dag-processor",),
        ("celery", "worker"),
        ("triggerer",),
        ("celery", "flower"),
    }
    env = _airflow_env(cli_results["home"])

    def run(w: tuple[str, ...]) -> tuple[tuple[str, ...], int, str]:
        proc = subprocess.run(
            [str(AIRFLOW_BIN), *w, "--help"], capture_output=True, text=True, env=env, timeout=120, check=False
        )
        return w, proc.returncode, proc.stderr[-400:]

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(pool.map(run, sorted(words)))
    assert [r for r in results if r[1] != 0] == []


def test_validator_rejects_typos(cli_results: dict[str, Any]) -> None:
    for argv in cli_results["typos"]:
        assert not cli_results["parsed"][tuple(argv)]["ok"], f"typo accepted: airflow {' '.join(argv)}"


def test_init_creates_the_pools(cli_results: dict[str, Any]) -> None:
    init = [argv for label, argv in cli_results["commands"].items() if label.startswith("airflow-init.sh")]
    assert ["pools", "set", "graph_api", "4", "Microsoft Graph"] in init
    assert ["pools", "set", "threecx_api", "1", "3CX XAPI (one live token per client)"] in init
    assert ["db", "migrate"] in init
    assert "python /opt/m365-3cx/docker/init_staging_db.py" in INIT_SCRIPT.read_text()


def test_worker_healthcheck_app_exists(resolved: dict[str, Any], tmp_path: Path) -> None:
    test = resolved["services"]["airflow-worker"]["healthcheck"]["test"]
    module = re.search(r"celery --app ([\w.]+)\.app inspect ping", test[1])
    assert module
    code = f"import {module[1]} as m; assert m.app.main"
    subprocess.run(
        [sys.executable, "-c", code], check=True, env=_airflow_env(tmp_path), capture_output=True, timeout=120
    )


# --- the emulators profile -------------------------------------------------------------------------


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize(("service", "name"), sorted(EMULATOR_SERVICES.items()))
def test_emulator_service_wiring(resolved: dict[str, Any], service: str, name: str) -> None:
    svc = resolved["services"][service]
    command = svc["command"]
    assert command[:2] == ["python", "/opt/m365-3cx/docker/run_emulator.py"]
    wrapper, emulator = command[2 : command.index("--")], command[command.index("--") + 1 :]
    assert emulator[:3] == ["python", "-m", f"emulators.{name}"]
    assert (ROOT / "emulators" / name).is_dir()
    assert _flag(emulator, "--host") == "0.0.0.0"
    port = _flag(emulator, "--port")
    assert _flag(wrapper, "--public-url") == f"https://{service}:{port}"
    assert _flag(wrapper, "--hostname") == service
    assert _flag(wrapper, "--name") == name
    assert _flag(wrapper, "--tls-dir") == _flag(emulator, "--tls-dir")
    state_dir = _flag(wrapper, "--state-dir")
    assert any(v == f"emulator-state:{state_dir}" for v in svc["volumes"])
    assert _flag(wrapper, "--tls-dir").startswith(state_dir + "/")
    assert svc["healthcheck"]["test"] == ["CMD", "test", "-s", f"{state_dir}/{name}.json"]
    assert any(p.endswith(f":{port}") for p in svc["ports"])
    assert svc["working_dir"] == "/opt/m365-3cx"
    # run_emulator.py imports emulators.common: the project root must be on the path
    assert svc["environment"]["PYTHONPATH"] == "/opt/m365-3cx"
    dockerfile = DOCKERFILE.read_text()
    assert "ENV M365_3CX_HOME=/opt/m365-3cx" in dockerfile
    assert "COPY --chown=airflow:0 emulators/ ./emulators/" in dockerfile
    for airflow in airflow_services(resolved).values():
        assert f"emulator-state:{state_dir}:ro" in airflow["volumes"]


def test_emulators_module_cli_accepts_flags(resolved: dict[str, Any]) -> None:
    """Once an emulator package has a __main__, its --help must list the flags compose passes."""
    for service, name in EMULATOR_SERVICES.items():
        if not (ROOT / "emulators" / name / "__main__.py").exists():
            continue  # built in parallel; the wiring test above checks the package folder
        command = resolved["services"][service]["command"]
        flags = {t for t in command[command.index("--") + 1 :] if t.startswith("--")}
        proc = subprocess.run(
            [sys.executable, "-m", f"emulators.{name}", "--help"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            timeout=60,
            check=True,
        )
        assert {f for f in flags if f not in proc.stdout} == set(), name


@pytest.fixture(scope="module")
def docker_scripts() -> dict[str, ModuleType]:
    return {
        "run": load_module("compose_run_emulator", ROOT / "docker" / "run_emulator.py"),
        "conns": load_module("compose_emulator_connections", ROOT / "docker" / "emulator_connections.py"),
    }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_emulator(resolved: dict[str, Any], service: str, state_dir: Path, port: int) -> subprocess.Popen[str]:
    """The service's compose command with container paths mapped to ``state_dir``, on loopback.

    Keeps ``--hostname <service>``, so the certificate the emulator serves must name the compose
    service; ``--public-url`` becomes https://localhost:<port> so this machine can reach it.
    """
    command = list(resolved["services"][service]["command"])
    container_state = _flag(command, "--state-dir")
    command = [c.replace(container_state, str(state_dir)) for c in command]
    sep = command.index("--")
    command[command.index("--public-url") + 1] = f"https://localhost:{port}"
    command[sep + 1 + command[sep + 1 :].index("--host") + 1] = "127.0.0.1"
    command[sep + 1 + command[sep + 1 :].index("--port") + 1] = str(port)
    command = [sys.executable if c == "python" else c for c in command]
    command[1] = str(ROOT / "docker" / "run_emulator.py")
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.integration
def test_emulators_profile_end_to_end(
    resolved: dict[str, Any], tmp_path: Path, docker_scripts: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run both emulators as compose does; the connections built from their state files work."""
    import ssl

    from airflow.sdk import Connection
    from cryptography import x509

    from m365_3cx.airflow.hooks import GraphHook, ThreeCXHook

    ports = {service: _free_port() for service in EMULATOR_SERVICES}
    procs = {s: _start_emulator(resolved, s, tmp_path, p) for s, p in ports.items()}
    try:
        deadline = time.monotonic() + 90
        while not all((tmp_path / f"{n}.json").exists() for n in EMULATOR_SERVICES.values()):
            dead = {s: p.stderr.read() for s, p in procs.items() if p.poll() is not None}
            assert not dead, dead
            assert time.monotonic() < deadline, "emulators did not publish their state"
            time.sleep(0.2)

        for service, port in ports.items():
            pem = ssl.get_server_certificate(("127.0.0.1", port))
            san = x509.load_pem_x509_certificate(pem.encode()).extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            )
            assert service in san.value.get_values_for_type(x509.DNSName), "emulator serves another certificate"

        env = docker_scripts["conns"].emulator_connections(tmp_path, check_dns=False)
        graph = Connection.from_json(env["AIRFLOW_CONN_M365_GRAPH"], conn_id="m365_graph")
        assert graph.extra_dejson["authority"] == f"https://localhost:{ports['graph-emulator']}"
        assert graph.extra_dejson["ca_bundle"] == str(tmp_path / "tls" / "graph" / "ca.pem")
        pbx = Connection.from_json(env["AIRFLOW_CONN_THREECX_XAPI"], conn_id="threecx_xapi")
        assert pbx.host == f"https://localhost:{ports['threecx-emulator']}"

        for key, value in env.items():
            monkeypatch.setenv(key, value)
        for variable in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            monkeypatch.delenv(variable, raising=False)
        assert GraphHook().test_connection()[0], GraphHook().test_connection()
        assert ThreeCXHook().test_connection()[0], ThreeCXHook().test_connection()

        # The emulator hosts of the state files do not resolve here: auto prints nothing, on fails.
        script = str(ROOT / "docker" / "emulator_connections.py")
        (tmp_path / "graph.json").write_text(
            (tmp_path / "graph.json").read_text().replace("https://localhost:", "https://graph-emulator:")
        )
        auto = subprocess.run(
            [sys.executable, script, "--state-dir", str(tmp_path)], capture_output=True, text=True, check=True
        )
        assert auto.stdout == ""
        on = subprocess.run(
            [sys.executable, script, "--state-dir", str(tmp_path), "--mode", "on"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert on.returncode == 1
        assert "does not resolve" in on.stderr
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(20)
    assert not (tmp_path / "graph.json").exists(), "the state file must go when the emulator stops"


def test_emulator_exports_are_shell_safe(tmp_path: Path, docker_scripts: dict[str, ModuleType]) -> None:
    conns = docker_scripts["conns"]
    for name, host in (("graph", "graph-emulator:8443"), ("threecx", "threecx-emulator:8444")):
        (tmp_path / f"{name}.json").write_text(
            json.dumps(
                {
                    "public_url": f"https://{host}",
                    "ca_bundle": "/x/ca.pem",
                    "info": {"credentials": {"client_id": "c'id", "client_secret": 'a $b `c` "d"', "tenant_id": "t"}},
                }
            )
        )
    env = conns.emulator_connections(tmp_path, check_dns=False)
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())
    out = subprocess.run(
        ["bash", "-c", exports + '\nprintf %s "$AIRFLOW_CONN_M365_GRAPH"'], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out)["password"] == 'a $b `c` "d"'
    (tmp_path / "threecx.json").write_text(json.dumps({"public_url": "https://h:1", "info": {"client_id": "x"}}))
    with pytest.raises(conns.EmulatorStateError, match="client_secret"):
        conns.emulator_connections(tmp_path, check_dns=False)


# --- staging database init -----------------------------------------------------------------------


@pytest.mark.postgres
def test_init_staging_db_is_idempotent() -> None:
    psycopg2 = pytest.importorskip("psycopg2")
    admin = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    try:
        psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {exc}")
    module = load_module("compose_init_staging_db", ROOT / "docker" / "init_staging_db.py")
    name = f"m3cx_compose_test_{os.getpid()}"
    try:
        first = module.ensure_staging_database(admin, name, name, "pw-1")
        assert first == [f"role {name} created", f"database {name} created, owner {name}"]
        second = module.ensure_staging_database(admin, name, name, "pw-2")
        assert second[1] == f"database {name} exists"
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user=name, password="pw-2", dbname=name)
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE probe (id int)")
        conn.close()
    finally:
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
            cur.execute(f'DROP ROLE IF EXISTS "{name}"')
        conn.close()
