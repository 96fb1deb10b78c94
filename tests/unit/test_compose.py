"""The container packaging in compose/ stays in step with the code it packages."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "compose" / "Dockerfile"
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
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


def _compose_services() -> dict[str, list[str]]:
    """Each compose service's lines, read as text (PyYAML is not a dependency)."""
    services: dict[str, list[str]] = {}
    current: list[str] | None = None
    in_services = False
    for line in COMPOSE_FILE.read_text().splitlines():
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
        if not re.search(r"^ {4}(<<: \*service|build:)", body, re.MULTILINE):
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


def test_compose_file_is_valid() -> None:
    """``docker-compose config`` accepts the file and lists the services the tests above read."""
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
