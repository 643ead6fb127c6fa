"""The usage ledger: GPU-seconds per team and per task, allocated and measured.

Pure parts: :mod:`.observe` (what governance holds at an instant), :mod:`.accrue` (GPU-
seconds between two instants, by hour, team, instance type and task), :mod:`.idle` (tasks
holding GPUs they do not use), :mod:`.report` (reports from stored rows). I/O:
:mod:`.books` (the SQL), :mod:`.recorder` (the coordinator's loop: sample, flush, prune).
"""
