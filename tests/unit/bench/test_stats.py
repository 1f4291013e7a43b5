"""The benchmarks' pure helpers: percentiles, per-bucket counts, Markdown tables."""

from __future__ import annotations

import math

from _stats import bucket_counts, percentile, ratio, table


def test_percentile_interpolates_between_closest_ranks() -> None:
    samples = [4.0, 1.0, 3.0, 2.0]
    assert percentile(samples, 0) == 1.0
    assert percentile(samples, 100) == 4.0
    assert percentile(samples, 50) == 2.5
    assert math.isclose(percentile(list(range(101)), 99), 99.0)


def test_percentile_of_nothing_is_nan_and_of_one_sample_is_that_sample() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([7.0], 99) == 7.0


def test_ratio_with_a_zero_baseline_is_nan() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))


def test_bucket_counts_drop_earlier_events_and_keep_empty_buckets() -> None:
    times = [9.9, 10.0, 10.05, 10.31, 10.35, 10.39]
    assert bucket_counts(times, start=10.0, width=0.1) == [2, 0, 0, 3]
    assert bucket_counts([], start=0.0, width=0.1) == []


def test_table_is_markdown_with_readable_numbers() -> None:
    text = table(["a", "b"], [(1, 0.12345), ("x", math.nan), ("y", 1234.5)])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.123 |", "| x | n/a |", "| y | 1234.5 |"]
