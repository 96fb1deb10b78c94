"""Seeded content and workloads: the same seed gives the same bytes and the same effects."""

from __future__ import annotations

import numpy as np

from services.hosts.memory import (
    DEFAULT_PROFILE,
    HostMemory,
    PageKind,
    VmSpec,
    Workload,
    content_layout,
)


def run(host: HostMemory, workload: Workload, steps: int) -> None:
    for step in range(steps):
        host.apply("vm", workload.step(host.spec("vm").pages, step, writes=40, reads=90))
        host.decay_heat()


def test_the_same_seed_gives_identical_content_on_any_host() -> None:
    """Content depends on the seed, not on the host's NUMA layout or what else it holds."""
    one, other = HostMemory([4]), HostMemory([1, 1, 1, 1])
    other.create_vm(VmSpec("first", 1, seed=99))
    one.create_vm(VmSpec("vm", 3, seed=7, template="linux"))
    other.create_vm(VmSpec("vm", 3, seed=7, template="linux"))

    assert one.checksum("vm") == other.checksum("vm")
    assert np.array_equal(one.page_digests("vm"), other.page_digests("vm"))


def test_different_seeds_give_different_unique_pages() -> None:
    """Unique pages of two VMs never coincide; their template and zero pages do."""
    host = HostMemory([4])
    host.create_vm(VmSpec("a", 1, seed=1, template="linux"))
    host.create_vm(VmSpec("b", 1, seed=2, template="linux"))
    kinds_b = content_layout(2, DEFAULT_PROFILE, 512).kinds
    common = np.isin(host.page_digests("b"), host.page_digests("a"))

    assert host.checksum("a") != host.checksum("b")
    assert not (common & (kinds_b == PageKind.UNIQUE)).any()
    assert common[kinds_b == PageKind.ZERO].all()
    assert common[kinds_b == PageKind.TEMPLATE].mean() > 0.5


def test_template_pages_differ_between_templates() -> None:
    """VMs of different templates share only their zero pages."""
    host = HostMemory([4])
    host.create_vm(VmSpec("a", 1, seed=1, template="linux"))
    host.create_vm(VmSpec("b", 1, seed=1, template="windows"))
    kinds = content_layout(1, DEFAULT_PROFILE, 512).kinds

    same = host.page_digests("a") == host.page_digests("b")

    assert np.array_equal(same, kinds != PageKind.TEMPLATE)


def test_content_follows_the_profile_shares() -> None:
    """About 20% zero, 30% template and 50% unique pages by default."""
    kinds = content_layout(5, DEFAULT_PROFILE, 100_000).kinds
    shares = np.bincount(kinds, minlength=3) / len(kinds)
    assert np.allclose(shares, [0.2, 0.3, 0.5], atol=0.01)


def test_the_same_seed_gives_identical_workload_effects() -> None:
    """Two runs of one seeded workload leave the same bytes, dirty bits, reads and heat."""
    hosts = [HostMemory([2]), HostMemory([1, 1])]
    for host in hosts:
        host.create_vm(VmSpec("vm", 2, seed=3))
        run(host, Workload(seed=11), steps=5)
    one, other = hosts

    assert one.checksum("vm") == other.checksum("vm")
    assert np.array_equal(one.collect_dirty("vm"), other.collect_dirty("vm"))
    assert np.array_equal(one.read_counts("vm"), other.read_counts("vm"))
    assert np.array_equal(one.heat("vm"), other.heat("vm"))


def test_another_workload_seed_gives_other_effects() -> None:
    """A different workload seed writes other pages."""
    hosts = [HostMemory([2]), HostMemory([2])]
    for seed, host in enumerate(hosts):
        host.create_vm(VmSpec("vm", 2, seed=3))
        run(host, Workload(seed=seed), steps=2)
    assert hosts[0].checksum("vm") != hosts[1].checksum("vm")


def test_most_writes_land_in_the_hot_set() -> None:
    """With hot_share 0.9, about 90% of writes (plus random hits) go to the hot pages."""
    workload = Workload(seed=2, hot_fraction=0.05, hot_share=0.9)
    hot = workload.hot_pages(20_000)
    accesses = workload.step(20_000, 0, writes=10_000, reads=0)

    assert len(np.unique(hot)) == 1_000
    assert 0.88 < np.isin(accesses.write_pages, hot).mean() < 0.94


def test_heat_decays_each_tick_and_grows_with_accesses() -> None:
    """Accessed pages gain heat; every tick multiplies all heat by the decay factor."""
    host = HostMemory([1])
    host.create_vm(VmSpec("vm", 1))
    host.write("vm", 8, b"x")
    host.read("vm", 8)
    host.read("vm", 9)
    assert host.heat("vm")[[8, 9, 10]].tolist() == [2.0, 1.0, 0.0]

    host.decay_heat(0.5)

    assert host.heat("vm")[[8, 9, 10]].tolist() == [1.0, 0.5, 0.0]
