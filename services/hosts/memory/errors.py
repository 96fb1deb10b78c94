"""What the memory model refuses: one root exception, one subclass per reason.

Every operation validates its whole input before it changes anything, so a raised error means
the host's memory is exactly as it was.
"""

from __future__ import annotations


class MemoryModelError(Exception):
    """The root of every error the guest-memory model raises."""


class InvalidArgument(MemoryModelError):
    """A size, count, seed or profile that cannot describe memory."""


class UnknownVm(MemoryModelError):
    def __init__(self, vm: str) -> None:
        super().__init__(f"no VM {vm!r} on this host")
        self.vm = vm


class VmExists(MemoryModelError):
    def __init__(self, vm: str) -> None:
        super().__init__(f"VM {vm!r} already has memory on this host")
        self.vm = vm


class PageOutOfRange(MemoryModelError):
    def __init__(self, vm: str, page: int, pages: int) -> None:
        super().__init__(f"page {page} is outside VM {vm!r} (pages 0..{pages - 1})")
        self.vm = vm
        self.page = page
        self.pages = pages


class PageNotResident(MemoryModelError):
    def __init__(self, vm: str, page: int) -> None:
        super().__init__(f"page {page} of VM {vm!r} is swapped out")
        self.vm = vm
        self.page = page


class SizeMismatch(MemoryModelError):
    """Two sizes that must agree do not (batch lengths, VM sizes, write extents)."""


class BytesDiffer(MemoryModelError):
    def __init__(self, vm_a: str, page_a: int, vm_b: str, page_b: int, pairs: int) -> None:
        super().__init__(
            f"cannot share: page {page_a} of {vm_a!r} and page {page_b} of {vm_b!r} differ "
            f"({pairs} differing pair(s) in the batch)"
        )
        self.vm_a = vm_a
        self.page_a = page_a
        self.vm_b = vm_b
        self.page_b = page_b
        self.pairs = pairs


class OutOfFrames(MemoryModelError):
    def __init__(self, wanted: int, free: int, unit: str) -> None:
        super().__init__(f"{wanted} {unit} wanted, {free} free")
        self.wanted = wanted
        self.free = free


class BelowUsedMemory(MemoryModelError):
    """A shrink that would cut off guest pages in use (see ``HostMemory.used_pages``)."""

    def __init__(self, vm: str, large_pages: int, used_pages: int) -> None:
        super().__init__(
            f"VM {vm!r} cannot shrink to {large_pages} large page(s): it uses {used_pages} pages"
        )
        self.vm = vm
        self.large_pages = large_pages
        self.used_pages = used_pages


class SwapFull(MemoryModelError):
    def __init__(self, wanted: int, free: int, reserved: int) -> None:
        super().__init__(
            f"{wanted} swap blocks wanted, {free} of the {reserved}-block reservation free"
        )
        self.wanted = wanted
        self.free = free
        self.reserved = reserved


class AccountingOnly(MemoryModelError):
    def __init__(self, vm: str) -> None:
        super().__init__(f"VM {vm!r} is accounting-only: its memory has no bytes")
        self.vm = vm


class ReadOnly(MemoryModelError):
    """A template's memory is the base of its forks: nothing writes it."""

    def __init__(self, vm: str) -> None:
        super().__init__(f"{vm} is a template: its memory is read-only")
        self.vm = vm
