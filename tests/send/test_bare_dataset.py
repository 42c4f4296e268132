"""Bare data sets (no preamble, no file meta) are sent like DCMTK's storescu sends them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from node.cli import main
from tests.peers import LOOPBACK, peer_env, run_storescp, tool
from tests.send.data import native_sc

pytestmark = pytest.mark.dcmtk


def _bare(src: Path, out: Path, syntax_option: str) -> Path:
    """``dcmconv -F``: the data set alone, in the syntax of ``syntax_option`` (+ti / +te)."""
    subprocess.run([tool("dcmconv"), "-F", syntax_option, str(src), str(out)], check=True)
    assert out.read_bytes()[:2] == b"\x08\x00"  # starts with a group 0008 element
    return out


def _received(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    ("syntax_option", "scp_option"),
    [("+ti", []), ("+te", []), ("+ti", ["+xe"]), ("+te", ["+xi"])],
    ids=["implicit", "explicit", "implicit-to-explicit-peer", "explicit-to-implicit-peer"],
)
def test_bare_data_set_arrives_as_storescu_sends_it(
    tmp_path: Path, syntax_option: str, scp_option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """storescu sends a file without meta header; we skipped it as "not a DICOM file"."""
    src = native_sc(tmp_path / "src.dcm", size=24, bits=12)
    bare = _bare(src, tmp_path / "bare.dcm", syntax_option)
    with run_storescp(tmp_path / "ours", extra=scp_option) as scp:
        code = main(["send", "--aec", scp.aet, f"{LOOPBACK}:{scp.port}", str(bare)])
        [ours] = _received(scp.out_dir)
    assert code == 0, capsys.readouterr().out
    with run_storescp(tmp_path / "theirs", extra=scp_option) as scp:
        subprocess.run(
            [tool("storescu"), "-aec", scp.aet, LOOPBACK, str(scp.port), str(bare)],
            check=True,
            env=peer_env(),
        )
        [theirs] = _received(scp.out_dir)
    a, b = dcmread(ours), dcmread(theirs)
    # storescu lets the peer pick among the uncompressed syntaxes; we send the data set in
    # its own syntax whenever the peer accepts it (see docs/send.md), so only the data set
    # is compared.
    assert a.SOPInstanceUID == b.SOPInstanceUID == dcmread(src).SOPInstanceUID
    assert a.PixelData == b.PixelData == dcmread(src).PixelData
    assert a == b  # the same data set (file meta aside)


def test_bare_data_set_can_be_queued(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bare = _bare(native_sc(tmp_path / "src.dcm"), tmp_path / "bare.dcm", "+ti")
    with run_storescp(tmp_path / "scp") as scp:
        cfg = tmp_path / "node.toml"
        cfg.write_text(
            f'[node]\nstate_dir = "state"\n[[destinations]]\nname = "pacs"\n'
            f'host = "{LOOPBACK}"\nport = {scp.port}\ncalled_ae = "{scp.aet}"\n'
        )
        assert main(["send", "-c", str(cfg), "--dest", "pacs", "--queue", str(bare)]) == 0
        assert main(["queue", "drain", "-c", str(cfg), "--dest", "pacs"]) == 0
        [got] = _received(scp.out_dir)
    assert dcmread(got).PixelData == dcmread(bare, force=True).PixelData


def test_file_starting_with_group_0008_but_no_sop_uids_is_skipped_naming_the_tag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "x.dcm"
    f.write_bytes(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100")
    assert main(["send", f"{LOOPBACK}:1", str(f)]) == 1
    out = capsys.readouterr().out
    assert "skipped" in out and "(0008,0016) SOPClassUID is missing" in out
