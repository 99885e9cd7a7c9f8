"""The Docker deployment files, checked without Docker: deploy/compose.yaml, deploy/Dockerfile,
deploy/.env.example, .dockerignore and .github/workflows/ci.yml are parsed, not run.

What only an engine can show (the images build, the stack becomes healthy, a chat ends with
``done``) is the ``compose`` job of the CI workflow.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from echotune.common.providers import ProviderConfig, ProviderKind, ProviderRegistry
from echotune.web.protocol import HTTP

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
DEPLOY_README = ROOT / "deploy" / "README.md"
DOCKERIGNORE = ROOT / ".dockerignore"
CI_WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"

ECHOTUNE_NAME = re.compile(r"\bECHOTUNE_[A-Z0-9_]*[A-Z0-9]\b")
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")
UV_IMAGE = re.compile(r"ghcr\.io/astral-sh/uv:(?P<tag>[^\s@]+)(?P<digest>@sha256:[0-9a-f]{64})?")
PINNED_UV_TAG = re.compile(r"\d+\.\d+\.\d+")
NON_ROOT_USER = re.compile(r"(?!0(:|$))(?!root(:|$))\S+")


# --- compose ------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def app_services() -> dict[str, dict[str, Any]]:
    """The services built from deploy/Dockerfile."""
    return {name: svc for name, svc in services().items() if "build" in svc}


def profile_services(profile: str) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services().items() if profile in s.get("profiles", [])}


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"] or ""
        value = env.get(name)
        if op in (":?", "?") and (value is None or (op == ":?" and not value)):
            raise LookupError(f"{name}: {arg}")
        if op == ":-":
            return value or arg
        if op == "-":
            return arg if value is None else value
        return value or ""

    return VARIABLE.sub(substitute, value.replace("$$", "\0")).replace("\0", "$")


def resolved_environment(service: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """A service's environment as the container would get it (unset pass-throughs dropped)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    resolved = {}
    for name, value in raw.items():
        if value is None:
            if name in env:
                resolved[name] = env[name]
        else:
            resolved[name] = interpolate(str(value), env)
    return resolved


def strings_in(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield str(key)
            yield from strings_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings_in(item)


def published_ports(service: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(host ip, container port) of each published port, short or long syntax."""
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, Mapping):
            ports.append((str(port.get("host_ip", "")), str(port["target"])))
            continue
        parts = interpolate(str(port), {}).split(":")
        host_ip = parts[0] if len(parts) == 3 else ""
        ports.append((host_ip, parts[-1]))
    return ports


def test_every_service_has_a_healthcheck() -> None:
    for name, service in services().items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} disables its healthcheck"
        test = check.get("test")
        assert isinstance(test, list), f"{name}: healthcheck test must be a list"
        assert test[0] in ("CMD", "CMD-SHELL"), name
        assert len(test) > 1, name


def test_dependencies_wait_for_healthy_services() -> None:
    for name, service in services().items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, Mapping), f"{name}: depends_on must name a condition"
        for dependency, spec in depends_on.items():
            assert dependency in services(), f"{name} depends on unknown {dependency}"
            assert spec.get("condition") == "service_healthy", f"{name} → {dependency}"
            assert services()[dependency].get("healthcheck"), dependency


def test_the_core_services_are_there() -> None:
    assert {"redis", "mongo", "gateway", "llm-worker", "telemetry", "analytics"} <= set(services())
    assert not services()["gateway"].get("profiles"), "the gateway is part of a plain `up`"


def test_llm_worker_can_be_scaled() -> None:
    worker = services()["llm-worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "hostname" not in worker
    assert not any("container_name" in service for service in services().values())


def test_gateway_is_published_on_8080_and_probes_healthz() -> None:
    gateway = services()["gateway"]
    assert [port for _, port in published_ports(gateway)] == ["8080"]
    assert interpolate(str(gateway["ports"][0]), {}) == "8080:8080"
    assert "/healthz" in " ".join(gateway["healthcheck"]["test"])


def test_gateway_reaches_analytics_on_the_compose_network() -> None:
    url = services()["gateway"]["environment"].get("ECHOTUNE_GATEWAY_ANALYTICS_URL")
    if url is None:
        pytest.skip("the gateway does not proxy analytics")
    command = services()["analytics"]["command"]
    assert url == f"http://analytics:{command[command.index('--port') + 1]}"


def test_redis_7_persists_with_append_only_file() -> None:
    redis = services()["redis"]
    assert redis["image"] == "redis:7"
    command = redis["command"]
    assert "--appendonly" in command
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(str(v).split(":")[1] == "/data" for v in redis["volumes"])
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])


def test_mongo_7_keeps_its_data_in_a_named_volume() -> None:
    mongo = services()["mongo"]
    assert mongo["image"] == "mongo:7"  # $percentile needs MongoDB 7
    volume, path = str(mongo["volumes"][0]).split(":")[:2]
    assert path == "/data/db"
    assert volume in compose()["volumes"]
    test = mongo["healthcheck"]["test"]
    assert test[:3] == ["CMD", "mongosh", "--quiet"]
    assert "db.adminCommand('ping')" in test


def test_tools_are_bound_to_localhost() -> None:
    tools = profile_services("tools")
    assert {"mongo-express", "redis-commander"} <= set(tools)
    for name, service in tools.items():
        ports = published_ports(service)
        assert ports, name
        for host_ip, _ in ports:
            assert host_ip == "127.0.0.1", f"{name} must bind 127.0.0.1"


def test_ollama_profile_and_the_documented_provider() -> None:
    assert "ollama" in profile_services("ollama")
    documented = [
        line for line in ENV_EXAMPLE.read_text().splitlines() if "http://ollama:11434/v1" in line
    ]
    assert documented, "deploy/.env.example documents the Ollama provider"
    value = documented[0].split("'")[1]
    providers = [ProviderConfig.model_validate(p) for p in json.loads(value)]
    registry = ProviderRegistry(providers, "ollama")
    ollama = registry.get("ollama")
    assert ollama is not None
    assert ollama.kind is ProviderKind.OPENAI
    assert str(ollama.base_url).rstrip("/") == "http://ollama:11434/v1"


def test_profiles_never_require_variables() -> None:
    """Compose interpolates every service, active or not: a ``${VAR:?…}`` in a profile's
    service would make a plain ``docker compose up`` fail."""
    for name, service in services().items():
        if not service.get("profiles"):
            continue
        for text in strings_in(service):
            for match in VARIABLE.finditer(text):
                assert match["op"] not in (":?", "?"), f"{name} requires {match['name']}"


def test_defaults_need_no_variable() -> None:
    """Every ``${VAR:?…}`` is a value without which nothing can work; a plain ``up`` with an
    empty environment resolves today (the demo provider works offline)."""
    for text in strings_in(compose()):
        interpolate(text, {})


def test_provider_keys_come_only_from_the_environment() -> None:
    for name, service in app_services().items():
        environment = service.get("environment") or {}
        providers = environment.get("ECHOTUNE_PROVIDERS")
        if providers is not None:
            assert VARIABLE.fullmatch(providers), f"{name}: ECHOTUNE_PROVIDERS is not ${{…}}"
    assert not re.search(r"api_key|sk-[A-Za-z0-9]", COMPOSE_FILE.read_text())


# --- every ECHOTUNE_ variable is a settings field ---------------------------------------------


def settings_modules() -> dict[str, Path]:
    """Each workspace member's settings module: import name → file."""
    found = {}
    for path in sorted(ROOT.glob("*/*/src/echotune/*/settings.py")):
        src = next(p for p in path.parents if p.name == "src")
        found[".".join(path.relative_to(src).with_suffix("").parts)] = path
    return found


def settings_classes(module_name: str) -> list[type[BaseSettings]]:
    module = importlib.import_module(module_name)
    return [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, BaseSettings) and cls.__module__ == module_name
    ]


def env_names(cls: type[BaseSettings]) -> set[str]:
    """The ECHOTUNE_ environment variables a settings class reads (nested settings too)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, info in cls.model_fields.items():
        alias = info.validation_alias
        if alias is None:
            names.add(f"{prefix}{info.alias or name}".upper())
        else:
            choices = getattr(alias, "choices", [alias])
            names |= {c.upper() for c in choices if isinstance(c, str)}
        if inspect.isclass(info.annotation) and issubclass(info.annotation, BaseSettings):
            names |= env_names(info.annotation)
    return {n for n in names if n.startswith("ECHOTUNE_")}


@cache
def known_names() -> frozenset[str]:
    names: set[str] = set()
    for module in settings_modules():
        for cls in settings_classes(module):
            names |= env_names(cls)
    return frozenset(names)


def unknown_names(text: str, known: frozenset[str]) -> list[str]:
    return sorted(set(ECHOTUNE_NAME.findall(text)) - known)


def test_settings_modules_are_found() -> None:
    modules = set(settings_modules())
    assert {
        "echotune.common.settings",
        "echotune.gateway.settings",
        "echotune.worker.settings",
        "echotune.telemetry.settings",
    } <= modules
    assert {
        "ECHOTUNE_REDIS_URL",
        "ECHOTUNE_MONGODB_URL",
        "ECHOTUNE_PROVIDERS",
        "ECHOTUNE_GATEWAY_HEARTBEAT_S",
        "ECHOTUNE_WORKER_CONCURRENCY",
        "ECHOTUNE_BREAKER_COOLDOWN_S",
    } <= known_names()


@pytest.mark.parametrize(
    "path", [COMPOSE_FILE, ENV_EXAMPLE, DEPLOY_README, CI_WORKFLOW], ids=lambda p: p.name
)
def test_every_echotune_variable_is_a_settings_field(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path.name} is not there")
    assert unknown_names(path.read_text(), known_names()) == []


@pytest.mark.parametrize(
    ("real", "misspelt"),
    [
        ("ECHOTUNE_REDIS_URL", "ECHOTUNE_REDIS_ULR"),
        ("ECHOTUNE_NAMESPACE", "ECHOTUNE_NAME_SPACE"),
        # a shared setting under a service prefix is not read either
        ("ECHOTUNE_MONGODB_URL", "ECHOTUNE_TELEMETRY_MONGODB_URL"),
    ],
)
def test_a_misspelt_variable_is_reported(real: str, misspelt: str) -> None:
    text = COMPOSE_FILE.read_text()
    assert real in text
    before = set(unknown_names(text, known_names()))
    after = set(unknown_names(text.replace(real, misspelt), known_names()))
    assert after - before == {misspelt}


def service_settings(service: Mapping[str, Any]) -> list[type[BaseSettings]]:
    """The settings classes of the package a compose service runs."""
    module = package_module(service["build"]["args"]["PACKAGE"])
    classes = settings_classes(f"{module}.settings")
    assert classes, f"{module}.settings defines no settings class"
    return classes


@pytest.mark.parametrize("name", sorted(app_services()))
def test_each_service_gets_only_variables_it_reads(name: str) -> None:
    service = services()[name]
    readable = set().union(*(env_names(cls) for cls in service_settings(service)))
    environment = service.get("environment") or {}
    foreign = sorted(n for n in environment if n.startswith("ECHOTUNE_") and n not in readable)
    assert foreign == [], f"{name} does not read {foreign}"


@pytest.mark.parametrize("name", sorted(app_services()))
def test_default_environment_is_valid_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the container gets with an empty deploy/.env validates, pointing at the
    compose network's Redis and MongoDB."""
    service = services()[name]
    environment = resolved_environment(service, {})
    for variable in [v for v in os.environ if v.startswith("ECHOTUNE_")]:
        monkeypatch.delenv(variable)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    for cls in service_settings(service):
        settings: Any = cls()
        assert settings.redis_url == "redis://redis:6379/0"
        assert settings.mongodb_url == "mongodb://mongo:27017/echotune"
        if hasattr(settings, "registry"):
            assert settings.registry().default == "demo"


# --- the images ---------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


@cache
def dockerfile() -> dict[str, Stage]:
    """The stages of deploy/Dockerfile by name, instructions with continuations joined."""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            current = Stage(name.strip().lower() or str(len(stages)), base.strip())
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((keyword, args))
    return stages


def lineage(stage: Stage) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    chain = [stage]
    while chain[-1].base.lower() in dockerfile():
        chain.append(dockerfile()[chain[-1].base.lower()])
    return chain


def inherited(stage: Stage, keyword: str) -> str | None:
    for ancestor in lineage(stage):
        if found := ancestor.all(keyword):
            return found[-1]
    return None


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), args
    return [str(v) for v in value]


def healthcheck_command(args: str) -> list[str]:
    _, _, command = args.partition("CMD ")
    return exec_form(command)


@cache
def lock() -> dict[str, Any]:
    return tomllib.loads((ROOT / "uv.lock").read_text())


def workspace_members() -> dict[str, str]:
    """Workspace package name → its directory."""
    return {
        p["name"]: p["source"]["editable"]
        for p in lock()["package"]
        if p["name"] in lock()["manifest"]["members"] and "editable" in p["source"]
    }


def package_module(package: str) -> str:
    pyproject = ROOT / workspace_members()[package] / "pyproject.toml"
    config = tomllib.loads(pyproject.read_text())
    return str(config["tool"]["uv"]["build-backend"]["module-name"])


def runtime_closure(package: str) -> set[str]:
    """Every package ``uv sync --no-dev --package`` installs for ``package`` (markers ignored)."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for entry in lock()["package"]:
        by_name.setdefault(entry["name"], []).append(entry)
    seen: set[str] = set()
    todo = [(package, ())]
    while todo:
        name, extras = todo.pop()
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        for entry in by_name.get(name, []):
            deps = list(entry.get("dependencies", []))
            for extra in extras:
                deps += entry.get("optional-dependencies", {}).get(extra, [])
            todo += [(dep["name"], tuple(dep.get("extra", ()))) for dep in deps]
    return {key.split("[")[0] for key in seen}


def test_uv_image_is_pinned_and_matches_ci() -> None:
    builder = dockerfile()["builder"]
    copies = [c for c in builder.all("COPY") if "astral-sh/uv" in c]
    assert len(copies) == 1
    match = UV_IMAGE.search(copies[0])
    assert match, copies[0]
    assert PINNED_UV_TAG.fullmatch(match["tag"]), f"uv image not pinned: {match['tag']}"
    assert copies[0].endswith("/uv /bin/uv")
    ci_text = CI_WORKFLOW.read_text()
    assert f'version: "{match["tag"]}"' in ci_text, "CI's setup-uv should use the same uv"


def test_dependencies_are_installed_before_the_sources_are_copied() -> None:
    builder = dockerfile()["builder"]
    syncs = [args for kw, args in builder.instructions if kw == "RUN" and "uv sync" in args]
    assert len(syncs) == 2
    for sync in syncs:
        assert "--frozen" in sync
        assert "--no-dev" in sync
        assert '--package "${PACKAGE}"' in sync
    assert "--no-install-workspace" in syncs[0]
    assert "--no-install-workspace" not in syncs[1]
    first = builder.instructions.index(("RUN", syncs[0]))
    copied = [
        args for kw, args in builder.instructions[:first] if kw == "COPY" and "--from" not in args
    ]
    sources = [s for c in copied for s in c.split()[:-1]]
    assert all(s.endswith(("pyproject.toml", "uv.lock")) for s in sources), sources
    for directory in workspace_members().values():
        assert f"{directory}/pyproject.toml" in sources, f"{directory} is a workspace member"


def test_images_hold_only_the_virtual_environment() -> None:
    runtime = dockerfile()["runtime"]
    assert runtime.base == dockerfile()["builder"].base == "python:3.11-slim"
    assert runtime.all("COPY") == ["--from=builder /app/.venv /app/.venv"]
    for stage in dockerfile().values():
        if stage is not dockerfile()["builder"]:
            assert not any("uv sync" in run for run in stage.all("RUN")), stage.name


@pytest.mark.parametrize("name", sorted(app_services()))
def test_image_target_runs_as_non_root_with_a_healthcheck(name: str) -> None:
    target = services()[name]["build"]["target"]
    stage = dockerfile()[target]
    assert "runtime" in [s.name for s in lineage(stage)]
    user = inherited(stage, "USER")
    assert user is not None, f"{target} runs as root"
    assert NON_ROOT_USER.fullmatch(user), f"{target} runs as {user}"
    assert inherited(stage, "HEALTHCHECK"), f"{target} has no HEALTHCHECK"
    assert inherited(stage, "CMD"), f"{target} has no CMD"


@pytest.mark.parametrize("name", sorted(app_services()))
def test_compose_and_image_agree(name: str) -> None:
    """Command and healthcheck are written twice (image and compose): they must not drift,
    the probe must hit the port the command listens on, and PACKAGE must hold the module."""
    service = services()[name]
    build = service["build"]
    assert build["context"] == ".."
    assert build["dockerfile"] == "deploy/Dockerfile"
    stage = dockerfile()[build["target"]]
    command = service["command"]
    assert command == exec_form(stage.all("CMD")[-1])
    probe = service["healthcheck"]["test"]
    assert probe[0] == "CMD"
    assert probe[1:] == healthcheck_command(stage.all("HEALTHCHECK")[-1])
    port = command[command.index("--port") + 1]
    assert f"http://127.0.0.1:{port}/healthz" in probe[-1]
    assert stage.all("EXPOSE") == [port]
    app_module = next(arg for arg in command if ":create_app" in arg).split(":")[0]
    assert app_module.startswith(package_module(build["args"]["PACKAGE"]) + ".")


@pytest.mark.parametrize("name", sorted(app_services()))
def test_uvicorn_answers_an_unreadable_request_in_json(name: str) -> None:
    """The services' own protocol (``echotune.web.protocol``), not uvicorn's text 400."""
    command = services()[name]["command"]  # the image's CMD is the same (test above)
    if command[0] == "uvicorn":
        assert command[command.index("--http") + 1] == HTTP


@pytest.mark.parametrize("name", sorted(app_services()))
def test_http_serving_images_install_uvicorn(name: str) -> None:
    """``uvicorn …`` and ``faststream run … --port`` (an ASGI FastStream app) both need
    uvicorn in the image, which holds only its own package's dependencies."""
    service = services()[name]
    command = service["command"]
    if command[0] == "uvicorn" or (command[:2] == ["faststream", "run"] and "--port" in command):
        assert "uvicorn" in runtime_closure(service["build"]["args"]["PACKAGE"])


def test_images_exclude_dev_dependencies() -> None:
    for service in app_services().values():
        installed = runtime_closure(service["build"]["args"]["PACKAGE"])
        assert not {"pytest", "ruff", "mypy", "testcontainers"} & installed


def test_build_context_is_an_allow_list() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "uv.lock", "libs", "services"}
    for stage in dockerfile().values():
        for copy in stage.all("COPY"):
            if "--from" in copy:
                continue
            for source in copy.split()[:-1]:
                assert source.split("/")[0] in allowed, f"{source} is not in the build context"


# --- CI -------------------------------------------------------------------------------------


def test_ci_runs_the_suite_against_real_servers_and_smoke_tests_the_stack() -> None:
    workflow = yaml.safe_load(CI_WORKFLOW.read_text())
    test, stack = workflow["jobs"]["test"], workflow["jobs"]["compose"]
    assert test["runs-on"] == stack["runs-on"] == "ubuntu-latest"
    assert test["services"]["redis"]["image"] == "redis:7"
    assert test["services"]["mongo"]["image"] == "mongo:7"
    for server in test["services"].values():
        assert "--health-cmd" in server["options"]
    assert {"REDIS_URL", "MONGODB_URL"} <= set(test["env"])
    runs = "\n".join(step.get("run", "") for step in test["steps"])
    assert "make lint" in runs
    assert "make test" in runs
    assert '"$status" -eq 5' in runs
    assert any(
        str(step.get("uses", "")).startswith("astral-sh/setup-uv@") for step in test["steps"]
    )
    cluster = workflow["jobs"]["cluster"]
    assert "REDIS_URL" not in cluster["env"], "the cluster subset starts its own cluster"
    assert "make test-cluster" in "\n".join(step.get("run", "") for step in cluster["steps"])
    steps = "\n".join(step.get("run", "") for step in stack["steps"])
    assert "docker compose build" in steps
    assert "up -d --wait" in steps
    assert "event: done" in steps
    assert "db.provider_telemetry.countDocuments()" in steps
    teardown = stack["steps"][-1]
    assert teardown["if"] == "always()"
    assert "docker compose down -v" in teardown["run"]
    assert stack["env"]["COMPOSE_FILE"] == COMPOSE_FILE.relative_to(ROOT).as_posix()
