"""The test peers themselves work: storescp answers C-ECHO, Orthanc answers REST."""

from __future__ import annotations

from tests.peers import Orthanc, Storescp, echo_ok


def test_storescp_answers_echo(storescp: Storescp) -> None:
    assert echo_ok(storescp.port, storescp.aet)


def test_orthanc_answers_rest_and_echo(orthanc: Orthanc) -> None:
    assert orthanc.get("/system")["DicomAet"] == orthanc.aet
    assert orthanc.instances() == []
    assert echo_ok(orthanc.dicom_port, orthanc.aet)
