"""The ledger-month benchmark's simulation, a day of 20 nodes: what the benchmark's figures
come from (rows in every ledger table, the silences recorded) is really there. A smoke
test of the script, not of its figures."""

from __future__ import annotations

from pathlib import Path

from bench.ledger_month import run_month


def test_a_simulated_day_fills_every_ledger_table_and_records_silences(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    lines: list[str] = []
    figures = run_month(url, nodes=20, teams=5, tasks=70, days=1, sample_s=600.0,
                        flush_s=600.0, seed=13, window_s=60.0, progress=lines.append)  # fmt: skip
    rows = figures.rows
    assert figures.counts["arrived"] == 70 and figures.counts["finished"] > 0
    assert 0 < rows["ledger_tasks"] <= 70
    assert rows["ledger_task_daily"] >= rows["ledger_tasks"]
    assert 24 <= rows["ledger_hourly"] <= 24 * 5 * 3  # hours x teams x instance types
    assert rows["ledger_cluster_hourly"] == 24 * 3
    assert rows["ledger_coverage"] == 1  # one writer, never stopped
    # a silence shorter than the sample interval can fall between two observations
    assert 0 < rows["ledger_missing"] <= figures.silences
    assert figures.size_mib and figures.vacuumed_mib
    assert len(figures.cadence.observe) == 12 and len(figures.cadence.take) == 4
    assert len(lines) >= 9  # the progress lines
