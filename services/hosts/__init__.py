"""Emulated hypervisor hosts: N per process, with VM lifecycle and telemetry."""
