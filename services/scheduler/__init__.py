"""The two priority schedulers (scheduler-high, scheduler-low) on one shared pool."""
