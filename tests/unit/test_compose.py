"""The container packaging in compose/ stays in step with the code it packages."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "compose" / "Dockerfile"
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
RABBITMQ_OVERRIDE = ROOT / "compose" / "docker-compose.rabbitmq.yml"
DOCKERIGNORE = ROOT / ".dockerignore"

# The import roots every service module needs at run time.
PACKAGES = {"schemas", "shared", "services"}
BROKERS = {"nats", "rabbitmq"}


def _service_modules() -> set[str]:
    """``services.<name>`` for every ``services/<name>/__main__.py`` in the repository."""
    return {f"services.{main.parent.name}" for main in (ROOT / "services").glob("*/__main__.py")}


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for each instruction, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def _exec_form(args: str) -> list[str]:
    """The argv of a CMD/ENTRYPOINT/command in exec (JSON) or shell form."""
    args = args.strip()
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def _module_of(argv: list[str]) -> str | None:
    """The module a ``python -m <module>`` command line runs, if it is one."""
    if "-m" in argv and argv.index("-m") + 1 < len(argv):
        return argv[argv.index("-m") + 1]
    return None


def _copied_sources() -> set[str]:
    """The build-context paths the Dockerfile COPYs (or ADDs), normalised."""
    sources: set[str] = set()
    for keyword, args in _dockerfile_instructions():
        if keyword not in {"COPY", "ADD"}:
            continue
        parts = _exec_form(args)
        if any(p.startswith("--from") for p in parts):
            continue  # from another stage, not from the build context
        paths = [p for p in parts if not p.startswith("--")]
        sources.update(p.removeprefix("./").rstrip("/") or "." for p in paths[:-1])
    return sources


def _compose_services(path: Path = COMPOSE_FILE) -> dict[str, list[str]]:
    """Each service's lines in a compose file, read as text (PyYAML is not a dependency)."""
    return _services_in(path.read_text())


def _services_in(text: str) -> dict[str, list[str]]:
    """Each service's lines in compose YAML text: a file, or ``docker-compose config`` output."""
    services: dict[str, list[str]] = {}
    current: list[str] | None = None
    in_services = False
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            in_services = line.rstrip() == "services:"
            current = None
            continue
        if not in_services:
            continue
        name = re.fullmatch(r" {2}([A-Za-z0-9][A-Za-z0-9_.-]*):\s*", line)
        if name:
            current = services.setdefault(name.group(1), [])
        elif current is not None:
            current.append(line)
    return services


def _is_vplane_service(lines: list[str]) -> bool:
    """Whether a service is built from compose/Dockerfile rather than a third-party image."""
    return re.search(r"^ {4}(<<: \*service|build:)", "\n".join(lines), re.MULTILINE) is not None


def _bus_url(lines: list[str]) -> str | None:
    """The VPLANE_BUS_URL a service's lines set, in mapping or list form, if they set one."""
    found = re.search(r"\bVPLANE_BUS_URL\s*[:=]\s*[\"']?([^\"'\s]+)", "\n".join(lines))
    return found.group(1) if found else None


def _port_entries(lines: list[str]) -> list[str]:
    """Each ``ports:`` entry in a service's lines.

    A short-syntax entry as written (``127.0.0.1:5672:5672``); a long-syntax one (what
    ``docker compose config`` prints: ``target:``, ``host_ip:``, ...) as its keys joined on
    one line; flow lists (``ports: ["..."]``) too.
    """
    entries: list[str] = []
    ports_indent: int | None = None
    for raw in lines:
        line = re.sub(r"\s+#.*$", "", raw)
        indent = len(line) - len(line.lstrip())
        item = line.strip()
        key = re.fullmatch(r"ports:\s*(.*)", item)
        if key:
            flow = key.group(1).strip("[] ")
            entries += [p.strip(" \"'") for p in flow.split(",") if p.strip(" \"'")]
            ports_indent = None if flow else indent
        elif ports_indent is None:
            continue
        elif item.startswith("- "):
            entries.append(item[2:].strip(" \"'"))
        elif indent <= ports_indent:
            ports_indent = None
        elif entries:
            entries[-1] += " " + item
    return entries


def _is_loopback(entry: str) -> bool:
    """Whether a ``ports:`` entry publishes on 127.0.0.1 only (a bare ``"8080"`` does not)."""
    if ": " not in entry:  # short syntax, [HOST_IP:]HOST_PORT:CONTAINER_PORT
        return entry.startswith("127.0.0.1:")
    host_ip = re.search(r"\bhost_ip:\s*[\"']?([^\s\"',}]+)", entry)
    return host_ip is not None and host_ip.group(1) == "127.0.0.1"


def test_dockerfile_copies_every_package_the_services_import() -> None:
    """The image copies schemas/, shared/, services/ and what pip needs to build the wheel.

    It also installs the project with pip, runs as a non-root user, and .dockerignore
    does not drop any of those paths from the build context.
    """
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel_packages = set(pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])
    needed = PACKAGES | wheel_packages | {"pyproject.toml", pyproject["project"]["readme"]}

    copied = _copied_sources()
    assert "." in copied or needed <= copied, f"not COPY'd: {sorted(needed - copied)}"

    instructions = _dockerfile_instructions()
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    assert any(re.search(r"\bpip install\b.*\s\.(\s|$)", run) for run in runs), runs
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}

    ignored = {
        line.strip().removeprefix("/").rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    assert not needed & ignored, f".dockerignore drops {sorted(needed & ignored)}"


def test_every_service_module_has_a_compose_service() -> None:
    """Each ``services/<name>/__main__.py`` is run by a compose service built from the image.

    A service built from compose/Dockerfile runs its ``command:`` or, without one, the
    Dockerfile's CMD. Every port compose publishes is bound to 127.0.0.1.
    """
    cmds = [args for keyword, args in _dockerfile_instructions() if keyword == "CMD"]
    assert cmds, "compose/Dockerfile has no CMD"
    default_module = _module_of(_exec_form(cmds[-1]))
    assert default_module in _service_modules(), f"CMD runs {default_module}"

    services = _compose_services()
    assert services.keys() >= BROKERS, sorted(services)
    run_modules: dict[str, str] = {}
    for name, lines in services.items():
        body = "\n".join(lines)
        if not _is_vplane_service(lines):
            continue  # a third-party image, not one of ours
        command = re.search(r"^ {4}command:\s*(\S.*)$", body, re.MULTILINE)
        module = _module_of(_exec_form(command.group(1))) if command else default_module
        assert module, f"compose service {name} does not run python -m <module>"
        run_modules[module] = name
        assert "container_name:" not in body, f"{name} cannot be scaled with a container_name"

    missing = _service_modules() - run_modules.keys()
    assert not missing, f"no compose service runs {sorted(missing)}"

    ports = re.findall(r"^\s+-\s+\"?([^\"\s]+:\d+(?:/\w+)?)\"?\s*$", COMPOSE_FILE.read_text(), re.M)
    assert ports, "no published ports found"
    assert all(p.startswith("127.0.0.1:") for p in ports), ports


def test_rabbitmq_override_moves_every_service_to_rabbitmq() -> None:
    """docker-compose.rabbitmq.yml points every vplane service of the base file at RabbitMQ.

    Each service built from the image gets an amqp:// VPLANE_BUS_URL to the rabbitmq service
    with the user and password the base file gives it, and waits for rabbitmq to be healthy.
    The override adds no service of its own and publishes no port beyond 127.0.0.1.
    """
    base = _compose_services()
    override = _compose_services(RABBITMQ_OVERRIDE)
    assert override.keys() <= base.keys(), (
        f"not in the base file: {sorted(override.keys() - base.keys())}"
    )

    broker = "\n".join(base["rabbitmq"])
    credentials = [
        re.search(rf"^\s+{key}:\s*[\"']?([^\"'\s]+)", broker, re.MULTILINE)
        for key in ("RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS")
    ]
    user, password = (match.group(1) if match else "guest" for match in credentials)

    vplane = sorted(name for name, lines in base.items() if _is_vplane_service(lines))
    assert vplane, "the base file runs no vplane service"
    for name in vplane:
        assert name in override, f"{name} is not moved to RabbitMQ by the override"
        url = _bus_url(override[name])
        assert url, f"the override sets no VPLANE_BUS_URL for {name}"
        parts = urlsplit(url)
        assert parts.scheme == "amqp", f"{name}: {url}"
        assert (parts.hostname, parts.port) == ("rabbitmq", 5672), f"{name}: {url}"
        assert (parts.username, parts.password) == (user, password), f"{name}: {url}"
        body = "\n".join(override[name])
        assert re.search(
            r"^ {4}depends_on:\s*\n {6}rabbitmq:\s*\n {8}condition:\s*service_healthy\s*$",
            body,
            re.MULTILINE,
        ), f"{name} does not wait for rabbitmq to be healthy"

    published = [entry for lines in override.values() for entry in _port_entries(lines)]
    assert all(_is_loopback(entry) for entry in published), published


def test_compose_file_is_valid() -> None:
    """``docker-compose config`` accepts the file and lists the services the tests above read.

    It also accepts the file merged with the RabbitMQ override, and the merged config gives
    every vplane service an amqp:// VPLANE_BUS_URL and publishes ports on 127.0.0.1 only.
    """
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    base = [tool, "-f", str(COMPOSE_FILE)]
    checked = subprocess.run(
        [*base, "config", "--quiet"], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert checked.returncode == 0, checked.stderr
    listed = subprocess.run(
        [*base, "config", "--services"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    names = set(listed.stdout.split())
    assert names == set(_compose_services()), "the text reader above misreads the file"
    assert names >= BROKERS, names

    merged = [*base, "-f", str(RABBITMQ_OVERRIDE)]
    checked = subprocess.run(
        [*merged, "config", "--quiet"], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert checked.returncode == 0, checked.stderr
    config = subprocess.run(
        [*merged, "config"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    services = _services_in(config.stdout)
    assert set(services) == names, "the override adds or drops a service"
    vplane = {name: lines for name, lines in services.items() if _is_vplane_service(lines)}
    assert vplane, config.stdout
    for name, lines in vplane.items():
        assert (_bus_url(lines) or "").startswith("amqp://"), f"{name} is not on RabbitMQ"
    published = [entry for lines in services.values() for entry in _port_entries(lines)]
    assert published, config.stdout
    assert all(_is_loopback(entry) for entry in published), published
