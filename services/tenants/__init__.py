"""Elastic tenant clusters: emulated Hadoop-like job trackers and their worker VMs."""
