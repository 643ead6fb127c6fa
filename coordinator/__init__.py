"""gpuwarden coordinator: fleet ingest, capacity model, recovery of broken instances, and
task governance. Imports the ``kubernetes`` package in ``coordinator.backends.kubernetes``
only."""
