"""--drain-grace / GAO_DRAIN_GRACE: seconds in-flight tunnel requests get when an agent stops (0..3600)."""

from __future__ import annotations

import pytest

from agent_operator.settings import DEFAULT_DRAIN_GRACE_S, UsageError, parse_settings


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("2.5", 2.5), ("3600", 3600.0)])
def test_a_grace_in_range_is_taken(value: str, seconds: float) -> None:
    assert parse_settings([f"--drain-grace={value}"], environ={}).drain_grace == seconds
    assert parse_settings([], environ={"GAO_DRAIN_GRACE": value}).drain_grace == seconds


def test_the_flag_wins_over_the_environment() -> None:
    assert parse_settings(["--drain-grace=7"], environ={"GAO_DRAIN_GRACE": "9"}).drain_grace == 7.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-0.5", "between 0 and 3600 seconds"),
        ("3600.5", "between 0 and 3600 seconds"),
        ("inf", "between 0 and 3600 seconds"),
        ("nan", "between 0 and 3600 seconds"),
        ("ten", "must be a number of seconds"),
    ],
)
def test_a_grace_out_of_range_or_not_a_number_is_a_usage_error(value: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as flag:
        parse_settings([f"--drain-grace={value}"], environ={})
    assert str(flag.value).startswith("--drain-grace ")
    with pytest.raises(UsageError, match=message):
        parse_settings([], environ={"GAO_DRAIN_GRACE": value})


def test_an_empty_flag_is_an_error_and_an_empty_variable_is_unset() -> None:
    with pytest.raises(UsageError, match="must be a number of seconds"):
        parse_settings(["--drain-grace="], environ={})
    assert parse_settings([], environ={"GAO_DRAIN_GRACE": " "}).drain_grace == DEFAULT_DRAIN_GRACE_S
