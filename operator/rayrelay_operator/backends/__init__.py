"""Backends: where the work of a resource runs (see ``base``)."""
