"""The condition building blocks: Resource matching, IAM dates and the request's time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from enclave_core.kmspolicy.conditions import (
    MET,
    UNKNOWN,
    UNMET,
    RequestContext,
    condition_results,
    parse_date,
    resource_match,
)

ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.mark.parametrize(
    ("element", "resource", "expected"),
    [
        ("*", ARN, MET),
        ("*", None, MET),
        (["arn:aws:kms:*", "*"], None, MET),
        (ARN, ARN, MET),
        ("arn:aws:kms:us-east-1:111122223333:key/*", ARN, MET),
        ("arn:aws:kms:us-east-1:111122223333:key/?234abcd-*", ARN, MET),
        ("arn:aws:kms:us-east-1:111122223333:key/.*", ARN, UNMET),  # no regex leaks through
        ("arn:aws:kms:us-east-1:111122223333:KEY/*", ARN, UNMET),
        ("arn:aws:kms:eu-west-1:111122223333:key/*", ARN, UNMET),
        (ARN, None, UNKNOWN),
        ([], ARN, UNKNOWN),
        ([ARN, 3], ARN, UNKNOWN),
        (None, ARN, UNKNOWN),
        ({"AWS": ARN}, ARN, UNKNOWN),
    ],
)
def test_resource_match(element: Any, resource: str | None, expected: str) -> None:
    assert resource_match(element, resource) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-12-06T17:40:00Z", datetime(2026, 12, 6, 17, 40, tzinfo=UTC)),
        ("2026-12-06T17:40:00", datetime(2026, 12, 6, 17, 40, tzinfo=UTC)),
        ("2026-12-06T19:40:00+02:00", datetime(2026, 12, 6, 17, 40, tzinfo=UTC)),
        ("2026-12-06", datetime(2026, 12, 6, tzinfo=UTC)),
        ("2026-12-06T17:40:00.500Z", datetime(2026, 12, 6, 17, 40, 0, 500000, tzinfo=UTC)),
        ("1796578800", datetime(2026, 12, 6, 17, 40, tzinfo=UTC)),
        ("0", datetime(1970, 1, 1, tzinfo=UTC)),
        ("", None),
        ("tomorrow", None),
        ("2026-02-30T00:00:00Z", None),
        ("-5", None),
        ("1.5", None),
        ("999999999999", None),  # beyond the year 9999
    ],
)
def test_parse_date(value: str, expected: datetime | None) -> None:
    assert parse_date(value) == expected


def test_the_request_time() -> None:
    fixed = RequestContext(now=datetime(2026, 12, 6, 18, 40, tzinfo=timezone(timedelta(hours=1))))
    assert fixed.lookup("aws:CurrentTime") == "2026-12-06T17:40:00Z"
    before = datetime.now(UTC)
    live = RequestContext().current_time()
    assert before <= live <= datetime.now(UTC)
    condition = {"DateGreaterThanEquals": {"aws:CurrentTime": "2026-12-06T17:40:00Z"}}
    assert condition_results(condition, fixed) == [(MET, "DateGreaterThanEquals aws:CurrentTime")]
    earlier = RequestContext(now=datetime(2026, 12, 6, 17, 39, 59, tzinfo=UTC))
    [(result, why)] = condition_results(condition, earlier)
    assert result == UNMET and "2026" not in why  # the request's time is not echoed
    [(result, _)] = condition_results({"DateLessThan": {"aws:CurrentTime": "soon"}}, fixed)
    assert result == UNKNOWN
