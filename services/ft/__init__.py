"""The FT logger/replayer: fault tolerance for protected VMs (schemas/ft.py)."""
