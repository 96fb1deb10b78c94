"""The ``vplane`` command: every error becomes one line and a non-zero exit."""

from __future__ import annotations

import signal
import sys

import typer

from shared.broker import BrokerError
from shared.bus import BusError
from shared.cli import (
    checkpoints,
    events,
    explain,
    ft,
    host,
    inventory,
    ledger,
    migrations,
    sharing,
    tenants,
    up,
    vm,
)
from shared.cli.common import CliError
from shared.logs import configure
from shared.settings import SettingsError

app = typer.Typer(
    name="vplane",
    help="vplane: an emulated datacenter control plane on a message bus.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command("up")(up.up)
app.add_typer(events.events_app, name="events")
vm.vm_app.command("checkpoint")(checkpoints.checkpoint)
vm.vm_app.command("restore")(checkpoints.restore)
vm.vm_app.command("checkpoints")(checkpoints.checkpoints)
vm.vm_app.command("checkpoint-delete")(checkpoints.checkpoint_delete)
vm.vm_app.command("fork")(sharing.fork)
vm.vm_app.command("tree")(sharing.tree)
app.add_typer(vm.vm_app, name="vm")
app.add_typer(host.host_app, name="host")
app.command("hosts")(inventory.hosts)
app.command("vms")(inventory.vms)
app.command("explain")(explain.explain)
app.command("ledger")(ledger.ledger)
app.add_typer(tenants.cluster_app, name="cluster")
app.add_typer(tenants.job_app, name="job")
app.command("clusters")(tenants.clusters)
app.command("migrations")(migrations.migrations)
app.add_typer(sharing.sharing_app, name="sharing")
app.add_typer(ft.ft_app, name="ft")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a usage error exits 2, any other failure 1, never with a traceback."""
    configure(level="warning", fmt="console", library_level="critical")
    # Ctrl-C (SIGINT) stops every command, also one started with SIGINT ignored, as a
    # script's background job is: `vplane events tail &` would otherwise follow for ever.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # Outside standalone mode an exit code comes back instead of being raised.
        code = app(args=argv, prog_name="vplane", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("vplane: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as err:
        # Usage errors carry the context of the command they were found in.
        ctx = getattr(err, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        print(f"vplane: error: {err.format_message()}{hint}", file=sys.stderr)
        sys.exit(err.exit_code)
    except (CliError, BusError, BrokerError, SettingsError) as err:
        print(f"vplane: error: {err}", file=sys.stderr)
        sys.exit(1)
    except OSError as err:
        print(f"vplane: error: {err or type(err).__name__}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
