"""Presentation-context planning and the sending syntax per file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from node.send.contexts import MAX_CONTEXTS, SendItem, choose_syntax, plan_associations


def _item(i: int, sop_class: str, ts: str) -> SendItem:
    return SendItem(Path(f"/x/{i}"), sop_class, f"1.2.3.{i}", ts, key=i)


def test_one_context_per_syntax_own_first() -> None:
    items = [_item(1, "1.2.840.10008.5.1.4.1.1.7", JPEGBaseline8Bit)]
    [(contexts, members)] = plan_associations(items)
    assert [ts for _, ts in contexts] == [
        JPEGBaseline8Bit,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    ]
    assert members == items


def test_more_than_128_contexts_split_over_associations_keeping_classes_together() -> None:
    items = [_item(i, f"1.2.3.4.{i}", JPEGBaseline8Bit) for i in range(100)]
    groups = plan_associations(items)
    assert len(groups) == 3  # 3 contexts per class, 42 classes per association
    assert all(len(cx) <= MAX_CONTEXTS for cx, _ in groups)
    assert [m for _, ms in groups for m in ms] == items
    for contexts, members in groups:
        assert {sop_class for sop_class, _ in contexts} == {m.sop_class_uid for m in members}


def test_destination_preferences_limit_the_proposal() -> None:
    items = [_item(1, "1.2.3", JPEGBaseline8Bit)]
    [(contexts, _)] = plan_associations(items, [ExplicitVRLittleEndian])
    assert [ts for _, ts in contexts] == [ExplicitVRLittleEndian]


def test_choose_syntax() -> None:
    assert choose_syntax(JPEGBaseline8Bit, [JPEGBaseline8Bit, ExplicitVRLittleEndian]) == (
        JPEGBaseline8Bit
    )
    assert choose_syntax(JPEGBaseline8Bit, [ImplicitVRLittleEndian]) == ImplicitVRLittleEndian
    assert choose_syntax(JPEGBaseline8Bit, []) is None


def test_undecodable_file_fails_with_one_message_and_no_traceback_in_the_log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pydicom logs a traceback per failing decoder plugin; the SendError says it all."""
    from pydicom.data import get_testdata_file

    from node.errors import SendError
    from node.send.contexts import transcode

    # The export room silences this logger for the whole process: undo that for this test.
    monkeypatch.setattr(logging.getLogger("pydicom.pixels.decoders.base"), "level", 0)
    src = get_testdata_file("JPEG-lossy.dcm")  # 12-bit extended JPEG no installed plugin decodes
    assert src is not None
    with caplog.at_level(logging.DEBUG), pytest.raises(SendError, match="cannot decode"):
        transcode(Path(str(src)), str(ExplicitVRLittleEndian))
    assert not [r for r in caplog.records if r.name.startswith("pydicom")], caplog.text
