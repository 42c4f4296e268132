"""Classification of every C-STORE status class (PS3.4 B.2.3, PS3.7 C)."""

from __future__ import annotations

import pytest

from node.send.status import Verdict, classify_status, status_text


@pytest.mark.parametrize(
    ("status", "verdict", "warning"),
    [
        (0x0000, Verdict.DELIVERED, False),
        (0xB000, Verdict.DELIVERED, True),
        (0xB006, Verdict.DELIVERED, True),
        (0xB007, Verdict.DELIVERED, True),
        (0xA700, Verdict.RETRY, False),
        (0xA7FF, Verdict.RETRY, False),
        (0x0213, Verdict.RETRY, False),
        (0xA900, Verdict.DEAD, False),
        (0xA9FF, Verdict.DEAD, False),
        (0xC000, Verdict.DEAD, False),
        (0xC211, Verdict.DEAD, False),
        (0xCFFF, Verdict.DEAD, False),
        (0x0107, Verdict.DELIVERED, True),  # warning: attribute list error (PS3.7 C.4.2)
        (0x0116, Verdict.DELIVERED, True),  # warning: attribute value out of range
        (0x0111, Verdict.DELIVERED, True),  # duplicate: the peer holds the instance
        (0x0117, Verdict.DEAD, False),
        (0x0122, Verdict.DEAD, False),
        (0x0124, Verdict.DEAD, False),
        (0x0211, Verdict.DEAD, False),
        (0x1234, Verdict.DEAD, False),
    ],
)
def test_classification(status: int, verdict: Verdict, warning: bool) -> None:
    outcome = classify_status(status, "peer says hi")
    assert outcome.verdict is verdict
    assert outcome.warning is warning
    assert outcome.status == status
    if status != 0:
        assert f"0x{status:04X}" in outcome.reason
        assert "peer says hi" in outcome.reason


def test_success_has_no_reason() -> None:
    outcome = classify_status(0)
    assert outcome.delivered and not outcome.warning
    assert outcome.describe() == "delivered"


def test_status_text_names_the_class() -> None:
    assert status_text(0xA701) == "0xA701 (Out of resources)"
    assert status_text(0xA900, "no") == '0xA900 (Data set does not match SOP class) "no"'
    assert status_text(0xC123) == "0xC123 (Cannot understand)"
