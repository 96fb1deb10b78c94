"""vplane's deployable services; each imports schemas and shared, never another service."""
