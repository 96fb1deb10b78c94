"""The guest memory of emulated hosts: real bytes in 4 KiB pages and 2 MiB large pages.

Pure and synchronous: ``HostMemory`` holds one host's frames (on NUMA nodes), swap
reservation and VMs; the host service drives it and reports what it returns.
"""

from services.hosts.memory.content import (
    DEFAULT_PROFILE,
    EMPTY_PROFILE,
    ContentLayout,
    ContentProfile,
    PageKind,
    content_layout,
)
from services.hosts.memory.errors import (
    AccountingOnly,
    BelowUsedMemory,
    BytesDiffer,
    InvalidArgument,
    MemoryModelError,
    OutOfFrames,
    PageNotResident,
    PageOutOfRange,
    SizeMismatch,
    SwapFull,
    UnknownVm,
    VmExists,
)
from services.hosts.memory.geometry import LARGE_PAGE_PAGES, LARGE_PAGE_SIZE, PAGE_SIZE
from services.hosts.memory.guest import MemoryMode, PageSelection, VmSpec
from services.hosts.memory.host import HEAT_DECAY, HostMemory
from services.hosts.memory.transfer import PageBatch
from services.hosts.memory.usage import MemoryUsage, NodeUsage, VmUsage
from services.hosts.memory.workload import Accesses, Workload

__all__ = [
    "DEFAULT_PROFILE",
    "EMPTY_PROFILE",
    "HEAT_DECAY",
    "LARGE_PAGE_PAGES",
    "LARGE_PAGE_SIZE",
    "PAGE_SIZE",
    "Accesses",
    "AccountingOnly",
    "BelowUsedMemory",
    "BytesDiffer",
    "ContentLayout",
    "ContentProfile",
    "HostMemory",
    "InvalidArgument",
    "MemoryMode",
    "MemoryModelError",
    "MemoryUsage",
    "NodeUsage",
    "OutOfFrames",
    "PageBatch",
    "PageKind",
    "PageNotResident",
    "PageOutOfRange",
    "PageSelection",
    "SizeMismatch",
    "SwapFull",
    "UnknownVm",
    "VmExists",
    "VmSpec",
    "VmUsage",
    "Workload",
    "content_layout",
]
