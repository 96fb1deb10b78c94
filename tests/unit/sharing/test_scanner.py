"""The daemon's scan against a host's real memory: what it finds and what that saves."""

from __future__ import annotations

import numpy as np

from schemas.memory import PagePair
from services.hosts.memory import HostMemory, VmSpec
from services.sharing.scanner import HostScan
from services.sharing.scanning import Holder
from tests.unit.sharing.support import HOST, duplicates, scan_pass


def seeded_host() -> HostMemory:
    """Two VMs of one guest-OS template, one of another, all with zero pages."""
    mem = HostMemory([16, 16])
    mem.create_vm(VmSpec("web1", 8, seed=1, template="linux"))
    mem.create_vm(VmSpec("web2", 8, seed=2, template="linux"))
    mem.create_vm(VmSpec("win", 8, seed=3, template="windows"))
    return mem


def test_two_passes_save_exactly_what_a_brute_force_count_finds() -> None:
    """The first pass only learns each page's digest (every page is new); the second
    shares every duplicate: the frames saved equal the duplicate pages counted byte for
    byte, and a third pass finds nothing more."""
    mem = seeded_host()
    expected = duplicates(mem, mem.vms)
    sums = {vm: mem.checksum(vm) for vm in mem.vms}
    scan = HostScan(HOST)

    assert scan_pass(mem, scan) == 0
    scan_pass(mem, scan)

    assert expected > 3_000
    assert mem.usage().saved_frames == expected
    assert scan_pass(mem, scan) == 0
    assert {vm: mem.checksum(vm) for vm in mem.vms} == sums


def test_a_page_that_changed_between_passes_is_volatile_and_not_proposed() -> None:
    """A page written since the pass before is skipped, not compared, in this pass: even
    when its new bytes equal another page's, it is proposed only once they hold still."""
    mem = seeded_host()
    scan = HostScan(HOST)
    scan_pass(mem, scan)
    scan_pass(mem, scan)
    digests = mem.page_digests("win")
    values, counts = np.unique(
        np.concatenate([mem.page_digests(vm) for vm in mem.vms]), return_counts=True
    )
    alone = values[counts == 1]
    twin = mem.copy_pages("win", [int(np.flatnonzero(np.isin(digests, alone))[0])])[0].tobytes()
    for page in range(8):
        mem.write("web1", page, twin)  # bytes another page holds

    assert scan_pass(mem, scan) == 0
    assert scan.figures.volatile == 8
    assert scan_pass(mem, scan) == 8
    assert scan.figures.volatile == 0


def test_pages_already_on_one_frame_are_not_proposed_again() -> None:
    """A restarted scan (new indexes) finds the shared pages on one frame: no pair."""
    mem = seeded_host()
    first = HostScan(HOST)
    scan_pass(mem, first)
    scan_pass(mem, first)
    saved = mem.usage().saved_frames

    again = HostScan(HOST)
    assert scan_pass(mem, again) == 0
    assert scan_pass(mem, again) == 0
    assert mem.usage().saved_frames == saved


def test_bookkeeping_grows_with_the_pages_scanned() -> None:
    """What the daemon keeps is a few bytes a page, well below what sharing saves."""
    mem = seeded_host()
    scan = HostScan(HOST)
    scan_pass(mem, scan)
    scan_pass(mem, scan)
    pages = sum(mem.spec(vm).pages for vm in mem.vms)
    kept = scan.bookkeeping_bytes()
    assert 17 * pages <= kept < mem.usage().saved_frames * 4096


def test_small_budgets_converge_on_forks_and_templates_without_going_back_and_forth() -> None:
    """Many small looks over forks (whose pages share their template's frames) and other
    guests: every duplicate ends up on one frame, and then passes propose nothing."""
    mem = seeded_host()
    mem.fork_vm("web1", "c1")
    mem.fork_vm("web1", "c2")
    scan = HostScan(HOST)
    for _ in range(4):
        scan_pass(mem, scan, budget=700)
    assert mem.usage().saved_frames == duplicates(mem, mem.vms)
    assert scan_pass(mem, scan, budget=700) == 0


def test_ranges_whose_digests_never_came_are_taken_again_first() -> None:
    """Several looks may be out at once; one that failed is taken again before the
    cursor moves on, and the pass is taken whole only once it has been."""
    scan = HostScan(HOST)
    scan.start_pass([("a", 1_000), ("b", 500)])
    first = scan.take(600)
    second = scan.take(600)
    assert [(r.vm, r.first, r.count) for r in first] == [("a", 0, 600)]
    assert [(r.vm, r.first, r.count) for r in second] == [("a", 600, 400), ("b", 0, 200)]
    scan.give_back(first)
    assert [(r.vm, r.first, r.count) for r in scan.take(500)] == [("a", 0, 500)]
    assert [(r.vm, r.first, r.count) for r in scan.take(500)] == [("a", 500, 100), ("b", 200, 300)]
    assert scan.taken


def test_a_page_whose_private_copy_is_on_its_way_is_not_proposed_meanwhile() -> None:
    """Between the host's copy and the fold of its answer, the daemon knows only that
    it asked: that page is held already, so the copy is not undone at once."""
    mem = seeded_host()
    scan = HostScan(HOST)
    scan_pass(mem, scan)
    scan_pass(mem, scan)
    page = int(np.flatnonzero(mem.page_digests("web2") == mem.page_digests("web1")[0])[0])
    holder = Holder(1.0)
    holder.asked_private.add(("web2", page))
    mem.unshare_pages("web2", [page], node=1)  # the host's copy, its answer not folded

    proposed: list[PagePair] = []
    scan_pass(mem, scan, held=holder.held(0.0), proposed=proposed)
    scan_pass(mem, scan, held=holder.held(0.0), proposed=proposed)

    named = {(p.vm_a, p.page_a) for p in proposed} | {(p.vm_b, p.page_b) for p in proposed}
    assert ("web2", page) not in named
    scan_pass(mem, scan, proposed=proposed)
    assert ("web2", page) in {(p.vm_b, p.page_b) for p in proposed}
