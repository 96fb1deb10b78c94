"""The resource model's one root exception."""


class ResourceModelError(ValueError):
    """A host, VM or workload description the resource model cannot use."""
