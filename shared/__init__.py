"""Plumbing every vplane service stands on: codec, bus, runtime, settings, logging, broker."""
