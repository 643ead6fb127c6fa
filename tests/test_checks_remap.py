from __future__ import annotations

from agent.checks.remap import RemapCheck, RemapConfig
from gpuwarden_common.health import Action, Severity
from gpuwarden_common.wire import RetiredPages, RowRemap
from tests.sample_factories import gpu, sample

CONFIG = RemapConfig(retired_pages_replace_at=60, clear_after_polls=2)


def test_a_pending_row_remap_warns_with_action_reset_gpu() -> None:
    node = sample((gpu(1, row_remap=RowRemap(uncorrectable=1, pending=True)),))
    findings = RemapCheck(CONFIG).check(node)
    assert [(f.code, f.severity, f.action, f.gpu_index) for f in findings] == [
        ("REMAP-PENDING", Severity.WARNING, Action.RESET_GPU, 1)
    ]


def test_a_pending_row_remap_clears_after_clean_polls() -> None:
    check = RemapCheck(CONFIG)
    check.check(sample((gpu(0, row_remap=RowRemap(pending=True)),)))
    clean = sample((gpu(0, row_remap=RowRemap(uncorrectable=1)),))
    assert [len(check.check(clean)) for _ in range(2)] == [1, 0]


def test_a_row_remap_failure_is_critical_with_action_replace() -> None:
    node = sample((gpu(0, row_remap=RowRemap(uncorrectable=8, failure=True)),))
    findings = RemapCheck(CONFIG).check(node)
    assert [(f.code, f.severity, f.action) for f in findings] == [
        ("REMAP-FAILURE", Severity.CRITICAL, Action.REPLACE)
    ]


def test_a_row_remap_failure_is_sticky() -> None:
    check = RemapCheck(CONFIG)
    check.check(sample((gpu(0, row_remap=RowRemap(failure=True)),)))
    assert [f.code for f in check.check(sample((gpu(0),)))] == ["REMAP-FAILURE"]


def test_retired_pages_pending_on_an_older_gpu_warn_with_action_reset_gpu() -> None:
    older = gpu(0, row_remap=None, retired_pages=RetiredPages(double_bit=1, pending=True))
    findings = RemapCheck(CONFIG).check(sample((older,)))
    assert [(f.code, f.severity, f.action) for f in findings] == [
        ("RETIRED-PAGES-PENDING", Severity.WARNING, Action.RESET_GPU)
    ]


def test_retired_pages_at_the_limit_call_for_replacement() -> None:
    older = gpu(0, row_remap=None, retired_pages=RetiredPages(single_bit=50, double_bit=10))
    findings = RemapCheck(CONFIG).check(sample((older,)))
    assert [(f.code, f.action) for f in findings] == [("RETIRED-PAGES-LIMIT", Action.REPLACE)]


def test_a_few_retired_pages_are_nothing() -> None:
    older = gpu(0, row_remap=None, retired_pages=RetiredPages(single_bit=3))
    assert RemapCheck(CONFIG).check(sample((older,))) == ()


def test_the_check_is_unsupported_without_remap_or_retired_page_data() -> None:
    node = sample((gpu(0, row_remap=None, retired_pages=None),))
    assert not RemapCheck(CONFIG).is_supported(node)


def test_a_row_remap_failure_stays_reported_when_remap_data_becomes_unreadable() -> None:
    check = RemapCheck(CONFIG)
    check.check(sample((gpu(0, row_remap=RowRemap(failure=True)),)))
    unreadable = sample((gpu(0, row_remap=None),))
    assert check.is_supported(unreadable)
    assert [f.code for f in check.check(unreadable)] == ["REMAP-FAILURE"]
