"""Parallelism: the device mesh, logical-axis rules, batch placement, multi-host start-up and
the ahead-of-time memory plan."""
