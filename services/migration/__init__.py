"""The migration coordinator: live migration policy (pre-copy rounds, convergence, switchover)."""
