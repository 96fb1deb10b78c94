"""Export the contract: one JSON Schema per message type, and one AsyncAPI 3.0 document.

Run ``python -m schemas.export`` after changing a message; ``--check`` fails when the
files in ``schemas/generated/`` no longer match the models.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from schemas.base import Kind, Message, registry
from schemas.envelope import Envelope

JSON = dict[str, Any]
GENERATED = Path(__file__).parent / "generated"
ASYNCAPI = "asyncapi.json"
NAMESPACE = "vplane"
DEAD_LETTER = "DeadLetter"
# The headers of a dead letter; they mirror shared/bus/nats.py.
DEAD_LETTER_HEADERS = {
    "Vplane-Reason": "why the message was buried",
    "Vplane-Delivery-Count": "how often it was delivered",
    "Vplane-Subject": "the subject it was consumed from",
    "Vplane-Consumer": "the durable consumer that gave up on it",
}
# channel: (address below the namespace, kinds it carries, what the services do, description)
CHANNELS: dict[str, tuple[str | None, tuple[Kind, ...], str, str]] = {
    "events": ("evt.{subject}", (Kind.EVENT,), "send", "The event log: facts, kept forever."),
    "commands": ("cmd.{subject}.{type}", (Kind.COMMAND,), "receive", "Requests to their owner."),
    "telemetry": ("tel.{subject}", (Kind.TELEMETRY,), "send", "Samples, kept for a while."),
    "queries": ("qry.{target}", (Kind.QUERY,), "receive", "Questions, by request/reply."),
    "replies": (None, (Kind.REPLY,), "", "Answers, sent to the requester's NATS inbox."),
    "deadLetters": ("dlq.{consumer}", (), "send", "Messages a consumer gave up on."),
}
PARAMETERS = {
    "subject": "the envelope's subject with `/` as `.`, like `vm.web-1` or `hosts`",
    "type": "the command's type name",
    "target": "the projection asked, like `hosts`",
    "consumer": "the durable consumer's name",
}


def schema_file(type_name: str) -> str:
    return f"{type_name}.schema.json"


def message_schema(cls: type[Message]) -> JSON:
    """The JSON Schema of an envelope whose ``data`` is a ``cls``."""
    schema: JSON = Envelope[cls].model_json_schema()  # type: ignore[valid-type]
    schema["properties"]["type"] = {"const": cls.type_name(), "title": "Type", "type": "string"}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["x-kind"] = cls.kind.value
    schema["x-schema-version"] = cls.schema_version
    return schema


def _channel(address: str | None, kinds: tuple[Kind, ...], description: str) -> JSON:
    names = [c.type_name() for c in registry if c.kind in kinds] if kinds else [DEAD_LETTER]
    channel: JSON = {
        "address": f"{NAMESPACE}.{address}" if address else None,
        "description": description,
        "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names},
    }
    params: dict[str, JSON] = {
        p: {"description": PARAMETERS[p]} for p in re.findall(r"{(\w+)}", address or "")
    }
    if "type" in params:
        params["type"]["enum"] = [c.type_name() for c in registry if c.kind in kinds]
    if params:
        channel["parameters"] = params
    return channel


def _message(cls: type[Message]) -> JSON:
    name, doc = cls.type_name(), (cls.__doc__ or "").strip()
    payload = {"$ref": f"#/components/schemas/{name}"}
    message = {"name": name, "title": name, "x-kind": cls.kind.value, "payload": payload}
    return message | ({"summary": doc.splitlines()[0]} if doc else {})


def asyncapi() -> JSON:
    """An AsyncAPI 3.0 document of every channel the services use."""
    messages = {c.type_name(): _message(c) for c in registry}
    headers = {h: {"type": "string", "description": d} for h, d in DEAD_LETTER_HEADERS.items()}
    messages[DEAD_LETTER] = {
        "name": DEAD_LETTER,
        "summary": "A buried message: its original bytes, unchanged, which may not decode.",
        "headers": {"type": "object", "properties": headers},
        "payload": {},
    }
    operations: JSON = {}
    for name, (_, _, action, _) in CHANNELS.items():
        if action:
            op: JSON = {"action": action, "channel": {"$ref": f"#/channels/{name}"}}
            if name == "queries":
                op["reply"] = {"channel": {"$ref": "#/channels/replies"}}
            operations[f"{action}{name[0].upper()}{name[1:]}"] = op
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "vplane", "version": "1.0.0", "description": "vplane's messages on NATS"},
        "defaultContentType": "application/json",
        "channels": {name: _channel(a, k, d) for name, (a, k, _, d) in CHANNELS.items()},
        "operations": operations,
        "components": {
            "schemas": {c.type_name(): {"$ref": schema_file(c.type_name())} for c in registry},
            "messages": messages,
        },
    }


def _dump(document: JSON) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def render() -> dict[str, str]:
    """Every generated file's name and text."""
    files = {schema_file(c.type_name()): _dump(message_schema(c)) for c in registry}
    files[ASYNCAPI] = _dump(asyncapi())
    return dict(sorted(files.items()))


def _present(directory: Path) -> set[str]:
    names = {p.name for p in directory.glob("*.schema.json")} if directory.is_dir() else set()
    return names | ({ASYNCAPI} if (directory / ASYNCAPI).is_file() else set())


def write(directory: Path = GENERATED) -> None:
    """Write every file, and remove the schemas of messages that no longer exist."""
    directory.mkdir(parents=True, exist_ok=True)
    files = render()
    for stale in _present(directory) - files.keys():
        (directory / stale).unlink()
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")


def check(directory: Path = GENERATED) -> list[str]:
    """The names of the files that differ from the models, are missing, or are extra."""
    files, present = render(), _present(directory)
    differ = {n for n in files.keys() & present if (directory / n).read_text("utf-8") != files[n]}
    return sorted(differ | (files.keys() ^ present))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.export", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the files have drifted")
    parser.add_argument("directory", nargs="?", type=Path, default=GENERATED)
    args = parser.parse_args(argv)
    if not args.check:
        write(args.directory)
        return 0
    if drifted := check(args.directory):
        print(f"drifted: {' '.join(drifted)}; run `python -m schemas.export`", file=sys.stderr)
    return 1 if drifted else 0


if __name__ == "__main__":
    sys.exit(main())
