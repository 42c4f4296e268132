"""``dicom-node convert`` in forked worker processes: same files, same report, same UIDs.

The reference is ``--processes 1`` (threads in one process): the worker mode must write
byte-identical outputs and print the same summary in the same order, whatever worker took
which file; a worker that dies costs only its file; a bug in a worker is raised in the
parent; no hidden temporaries are ever left behind.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from node.cli import main
from node.ingest import commands, forkpool
from node.ingest import convert as cv
from node.ingest.batchwrite import GroupCommitWriter
from tests.ingest import corpus

pytestmark = pytest.mark.skipif(not forkpool.available(), reason="needs os.fork")


def _small_jpegs(folder: Path, count: int) -> None:
    """``IMG_0.jpg`` ... in ``folder``: small distinct JPEGs."""
    for i in range(count):
        corpus.write(folder, f"IMG_{i}.jpg", corpus.jpeg(corpus.rgb(20, 10, seed=i)))


def _corpus(root: Path) -> Path:
    """Good cases of every kind in two folders, plus refusals, plus a nested folder."""
    good = corpus.good_cases()
    for i, case in enumerate(good):
        corpus.write(root / ("a" if i % 2 else "b"), f"{case.name}-{case.filename}", case.make())
    for name, filename, make, _exc, _phrase in corpus.bad_cases():
        if name != "bomb":  # 60000x60000 header: fine, but keep the run small
            corpus.write(root / "a" / "bad", f"{name}-{filename}", make())
    for i in range(12):
        data = corpus.jpeg(corpus.rgb(40 + i, 30, seed=i), exif=corpus.exif_block())
        corpus.write(root / "b" / "cam", f"IMG_{i:02d}.jpg", data)
    return root


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", "convert", *args, "--log-level", "ERROR"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _report(stderr: str, out: Path) -> list[str]:
    """The summary and refusal lines, without the timing."""
    lines = []
    for line in stderr.replace(str(out), "OUT").splitlines():
        if line.startswith("converted "):
            line = line.split(" in ")[0]
        lines.append(line.split(" node.ingest.commands: ")[-1])
    return lines


@pytest.mark.parametrize("extra", [[], ["--sop-class", "vlp", "-k", "PatientName=Müller^Jörg"]])
def test_workers_write_the_same_files_and_report_as_one_process(
    tmp_path: Path, extra: list[str]
) -> None:
    src = _corpus(tmp_path / "in")
    runs = {}
    for mode in (["--processes", "1"], ["--processes", "2"], ["--processes", "5"]):
        out = tmp_path / ("out" + "".join(mode))
        res = _run([str(src / "a"), str(src / "b"), "-o", str(out), *mode, *extra])
        runs[mode[1]] = (res.returncode, _report(res.stderr, out), _tree(out))
    assert runs["1"][0] == 1  # the bad inputs are refused
    assert any("refused: " in line for line in runs["1"][1])
    assert runs["2"] == runs["1"]
    assert runs["5"] == runs["1"]
    assert not [name for name in runs["1"][2] if "/." in name or name.startswith(".")]


def test_a_dying_worker_costs_only_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    _small_jpegs(src, 8)
    real = cv.convert_file

    def crashing(source: Path, *args: object, **kwargs: object) -> object:
        result = real(source, *args, **kwargs)  # type: ignore[arg-type]
        if source.name == "IMG_3.jpg":  # dies after writing its temporary
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    monkeypatch.setattr(commands, "convert_file", crashing)
    out = tmp_path / "out"
    code = main(["convert", str(src), "-o", str(out), "--processes", "2"])
    err = capsys.readouterr().err
    assert code == 1
    assert "IMG_3.jpg: not converted: the worker process was killed by SIGKILL" in err
    assert "converted 7, refused 1 of 8" in err
    assert sorted(p.name for p in out.iterdir()) == [
        f"IMG_{i}.dcm" for i in range(8) if i != 3
    ]  # and no hidden temporary left behind


def test_a_bug_in_a_worker_is_raised_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in"
    _small_jpegs(src, 6)
    real = cv.convert_file

    def buggy(source: Path, *args: object, **kwargs: object) -> object:
        if source.name == "IMG_4.jpg":
            raise ZeroDivisionError("a bug")
        return real(source, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(commands, "convert_file", buggy)
    out = tmp_path / "out"
    with pytest.raises(forkpool.WorkerError, match="ZeroDivisionError: a bug"):
        main(["convert", str(src), "-o", str(out), "--processes", "2"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_results_come_in_index_order_whatever_finishes_first() -> None:
    seen: list[int] = []

    def slow(index: int) -> tuple[int, int]:
        time.sleep(random.Random(index).random() / 200)
        return index, os.getpid()

    results: list[object] = []
    forkpool.run_forked(
        60,
        3,
        slow,
        lambda i, r: (seen.append(i), results.append(r)),  # type: ignore[func-returns-value]
    )
    assert seen == list(range(60))
    assert [r[0] for r in results] == list(range(60))  # type: ignore[index]
    assert len({r[1] for r in results}) > 1  # type: ignore[index]  # more than one worker


def test_abort_removes_temporaries_workers_never_reported(tmp_path: Path) -> None:
    writer = GroupCommitWriter(group=100)
    reported = writer.write_temp(tmp_path / "a.dcm", b"a")
    writer.add(reported, tmp_path / "a.dcm")
    if os.fork() == 0:  # a worker writes one and dies before reporting it
        writer.write_temp(tmp_path / "b.dcm", b"b")
        os._exit(0)
    os.wait()
    foreign = tmp_path / ".tmp-other"  # not this batch's: left alone
    foreign.write_bytes(b"x")
    writer.remove_strays([tmp_path])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".tmp-other", reported.name])
    writer.abort([tmp_path])
    assert [p.name for p in tmp_path.iterdir()] == [".tmp-other"]


def test_ctrl_c_stops_the_workers_and_leaves_no_temporaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in"
    _small_jpegs(src, 10)
    real = cv.convert_file

    def stuck(source: Path, *args: object, **kwargs: object) -> object:
        result = real(source, *args, **kwargs)  # type: ignore[arg-type]
        if source.name == "IMG_6.jpg":  # written, then hangs: a temporary never reported
            time.sleep(60)
        return result

    monkeypatch.setattr(commands, "convert_file", stuck)
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    try:
        code = main(["convert", str(src), "-o", str(tmp_path / "out"), "--processes", "2"])
    finally:
        timer.cancel()
    assert code == 130
    assert time.monotonic() - started < 30  # the stuck worker was killed, not waited for
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
