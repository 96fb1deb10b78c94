"""Workload profiles: seeded, repeatable, and shaped as their names say."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest

from services.hosts.resources import (
    Bursty,
    DemandArrays,
    Diurnal,
    HadoopWorker,
    NoisyNeighbour,
    ResourceModelError,
    Steady,
    Workload,
    WorkloadTable,
    series,
)

PROFILES: list[Workload] = [Steady(), Bursty(), Diurnal(), HadoopWorker(), NoisyNeighbour()]
TIMES = np.arange(0.0, 3_600.0, 7.0)
DAY = 86_400.0


def stacked(d: DemandArrays) -> np.ndarray[tuple[int, int], np.dtype[np.float64]]:
    return np.stack([getattr(d, f.name) for f in fields(d)])


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: type(p).__name__)
def test_profile_repeats_exactly_for_the_same_seed(profile: Workload) -> None:
    """The same profile and seed give the identical series, whatever order times are asked in."""
    seeded = replace(profile, seed=42)
    first = stacked(series(seeded, TIMES, 4, 8_192))
    again = stacked(series(seeded, TIMES[::-1], 4, 8_192))[:, ::-1]
    assert np.array_equal(first, again)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: type(p).__name__)
def test_profile_differs_across_seeds(profile: Workload) -> None:
    """Two seeds give two different series."""
    one = stacked(series(replace(profile, seed=1), TIMES, 4, 8_192))
    two = stacked(series(replace(profile, seed=2), TIMES, 4, 8_192))
    assert not np.array_equal(one, two)


def test_table_samples_each_vm_as_its_own_series_does() -> None:
    """Sampling many mixed VMs at once equals sampling each VM's profile alone."""
    workloads = [replace(p, seed=s) for s in range(3) for p in PROFILES]
    vcpus = np.arange(1.0, len(workloads) + 1)
    mem = 1_024.0 * vcpus
    table = WorkloadTable(workloads)
    for t in (0.0, 123.4, 50_000.0):
        together = stacked(table.demand(t, vcpus, mem))
        for i, w in enumerate(workloads):
            alone = stacked(series(w, np.array([t]), int(vcpus[i]), int(mem[i])))[:, 0]
            assert np.array_equal(together[:, i], alone)


def test_diurnal_repeats_every_emulated_day() -> None:
    """Without noise, a diurnal VM's demand one day later is the same, and it peaks once a day."""
    quiet = Diurnal(noise=0.0, seed=5)
    hours = np.arange(0.0, 2 * DAY, 600.0)
    today = series(quiet, hours, 4, 1_024).cpu_cores
    tomorrow = series(quiet, hours + DAY, 4, 1_024).cpu_cores
    assert today == pytest.approx(tomorrow, abs=1e-9)
    first_day = today[: len(hours) // 2]
    assert first_day.max() - first_day.min() > 2.0  # a real swing over the day
    peaks = np.flatnonzero((today[1:-1] > today[:-2]) & (today[1:-1] >= today[2:]))
    assert len(peaks) == 2


def test_diurnal_peaks_near_its_peak_hour() -> None:
    """The daily peak falls within the seeded spread of ``peak_s``."""
    profile = Diurnal(noise=0.0, peak_s=9 * 3_600.0, spread_s=1_800.0, seed=11)
    minutes = np.arange(0.0, DAY, 60.0)
    peak = minutes[np.argmax(series(profile, minutes, 4, 1_024).cpu_cores)]
    assert abs(peak - 9 * 3_600.0) <= 1_800.0 + 60.0


def test_bursty_alternates_bursts_and_idle_once_per_cycle() -> None:
    """A bursty VM switches between burst and idle levels, one burst per on+off cycle."""
    profile = Bursty(on_s=60.0, off_s=240.0, idle_cpu=0.1, burst_cpu=0.9, seed=9)
    seconds = np.arange(0.0, 30 * 300.0, 1.0)
    cpu = series(profile, seconds, 10, 1_024).cpu_cores
    assert set(np.round(cpu, 9)) == {1.0, 9.0}
    on = cpu > 5.0
    starts = int(np.count_nonzero(on[1:] & ~on[:-1]))
    assert 29 <= starts <= 31
    assert 0.1 < on.mean() < 0.3  # roughly on_s / (on_s + off_s)


def test_hadoop_worker_cpu_scales_with_task_slots() -> None:
    """Twice the task slots, same seed: twice the CPU demand and twice the shuffle traffic."""
    small = series(HadoopWorker(slots=3, seed=4), TIMES, 64, 8_192)
    large = series(HadoopWorker(slots=6, seed=4), TIMES, 64, 8_192)
    assert large.cpu_cores == pytest.approx(2 * small.cpu_cores)
    assert large.net_tx_mbps == pytest.approx(2 * small.net_tx_mbps)
    assert large.storage_write_mbs == pytest.approx(2 * small.storage_write_mbs)
    assert small.cpu_cores.min() >= 3 * 0.5 - 1e-9  # at least busy_min of the slots run


def test_hadoop_worker_shuffles_over_network_and_storage() -> None:
    """Network and storage I/O rise tenfold during each task's shuffle phase."""
    profile = HadoopWorker(slots=4, task_s=30.0, shuffle_share=0.3, busy_min=1.0, seed=2)
    seconds = np.arange(0.0, 300.0, 0.5)
    net = series(profile, seconds, 8, 4_096).net_rx_mbps
    assert set(np.round(net, 6)) == {40.0, 400.0}
    assert np.mean(net == 400.0) == pytest.approx(0.3, abs=0.02)


def test_noisy_neighbour_wants_every_vcpu_and_more_io_than_a_host_has() -> None:
    """A noisy neighbour demands all its vCPUs all the time and many Gbit/s of I/O."""
    d = series(NoisyNeighbour(seed=1), TIMES, 6, 2_048)
    assert np.all(d.cpu_cores == 6.0)
    assert d.net_tx_mbps.min() > 10_000.0
    assert d.storage_read_mbs.min() > 2_000.0


def test_profiles_reject_impossible_parameters() -> None:
    """Negative levels and non-positive periods are refused when the profile is described."""
    with pytest.raises(ResourceModelError):
        Steady(cpu=-0.1)
    with pytest.raises(ResourceModelError):
        Diurnal(day_s=0.0)
    with pytest.raises(ResourceModelError):
        HadoopWorker(task_s=0.0)
