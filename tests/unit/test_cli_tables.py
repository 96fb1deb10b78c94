"""Tables piped into grep or a file keep their cells whole."""

from __future__ import annotations

from rich.table import Table

from shared.cli.common import table_console


def test_a_piped_table_keeps_long_names_whole() -> None:
    name = "a-rather-long-vm-name-that-grep-must-find"
    table = Table("vm", "host", "vCPU", "mem MiB", "disk GiB", "priority", "state", "workload")
    table.add_row(name, "h1", "1", "512", "1", "high", "on", "steady")
    console = table_console()  # pytest captures stdout: not a terminal
    assert not console.is_terminal
    with console.capture() as printed:
        console.print(table)
    assert name in printed.get()
