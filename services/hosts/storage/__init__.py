"""Virtual disks on a shared datastore: sparse files, copy-on-write chains, seeded content.

``datastore`` is the directory every hosts process on a machine shares (its space and its
crash-safe file replacement); ``disk`` is one disk in it: a base disk whose unwritten blocks
are generated from its seed, or a copy-on-write child of another disk.
"""
