"""Rendering against DCMTK: 8-bit (and 16-bit grayscale) output compared with dcmj2pnm/dcml2pnm.

The bar (issue 5): identical on >= 99.9 % of pixels and never off by more than 1, for every
file DCMTK renders, with the matching VOI option (+Wi N, +Wl N, +Wm, +Ww C W). Files where
the two cannot agree for a reason outside the rendering pipeline are listed in KNOWN with
the reason, and checked for what can be checked instead.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image

from node.errors import BadPixelData
from node.export import decode, display
from tests.export import data
from tests.peers import tool

pytestmark = pytest.mark.dcmtk

TEST_FILES = Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files"
JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
SC = "1.2.840.10008.5.1.4.1.1.7"
LOSSY_12BIT = "lossy 12-bit JPEG: IJG libjpeg 6b (DCMTK) and libjpeg 9 differ in the IDCT"

#: Files DCMTK renders where a pixel comparison is not meaningful, and why.
KNOWN = {
    "JPGExtended.dcm": LOSSY_12BIT,
    "JPEG-lossy.dcm": "no installed decoder reads this 12-bit stream (pydicom documents it)",
    "badVR.dcm": "(0028,0008) NumberOfFrames '1A' is refused as inconsistent on purpose",
    "rtdose_expb.dcm": "DCMTK 3.6.7 mis-swaps 32-bit big-endian pixels (its LE twin agrees)",
    "rtdose_expb_1frame.dcm": "DCMTK 3.6.7 mis-swaps 32-bit big-endian pixels",
}


def _has_pixels(path: Path) -> bool:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - unreadable files are simply not candidates
        return False
    return "Rows" in ds and ds.get("SOPClassUID") != decode.ENCAPSULATED_PDF


BUNDLED = sorted(p.name for p in TEST_FILES.glob("*.dcm") if _has_pixels(p))


def dcmtk_render(
    path: Path, opts: list[str], tmp: Path, frame: int = 0, bits: int = 8
) -> np.ndarray | None:
    """DCMTK's rendering of one frame, or None if DCMTK refuses the file or the option."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ts = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", ""))
    exe = tool("dcml2pnm") if ts in JPEG_LS else tool("dcmj2pnm")
    out = tmp / f"ref-{path.stem}-{'_'.join(opts)}-{frame}-{bits}.{'pnm' if bits == 16 else 'png'}"
    # 16 bits: ASCII PGM/PPM (+opw), the same values as +on2 writes; Pillow would read a
    # 48-bit RGB PNG as 8-bit RGB
    fmt = ["+opw"] if bits == 16 else ["+on", "-il"]
    res = subprocess.run(
        [exe, *opts, "+F", str(frame + 1), *fmt, str(path), str(out)],
        capture_output=True,
        timeout=60,
    )
    if res.returncode != 0 or not out.exists():
        return None
    return read_pnm(out.read_bytes()) if bits == 16 else np.asarray(Image.open(out))


def read_pnm(blob: bytes) -> np.ndarray:
    """An ASCII PGM (P2) or PPM (P3), as dcmj2pnm +opw writes them, as uint16."""
    magic, width, height, _, *values = blob.split()
    samples = 3 if magic == b"P3" else 1
    arr = np.array(values, dtype=np.uint16).reshape(int(height), int(width), samples)
    return arr[..., 0] if samples == 1 else arr


def read_png(blob: bytes) -> np.ndarray:
    """Samples of a non-interlaced 8/16-bit grayscale or RGB PNG (every filter type)."""
    import struct
    import zlib

    pos, idat, header = 8, b"", b""
    while pos < len(blob):
        (size,) = struct.unpack(">I", blob[pos : pos + 4])
        kind, body = blob[pos + 4 : pos + 8], blob[pos + 8 : pos + 8 + size]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + size
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert interlace == 0 and depth in (8, 16) and colour in (0, 2)
    bpp = depth // 8 * (3 if colour == 2 else 1)
    lines = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, -1)
    out = np.zeros((height, lines.shape[1] - 1), np.int64)
    prev = np.zeros(out.shape[1], np.int64)
    for y in range(height):
        kind, cur = lines[y, 0], lines[y, 1:].astype(np.int64)
        if kind == 2:
            cur = cur + prev
        elif kind in (1, 3, 4):
            for x in range(0, len(cur), bpp):
                a = cur[x - bpp : x] if x else np.zeros(bpp, np.int64)
                b, c = prev[x : x + bpp], prev[x - bpp : x] if x else np.zeros(bpp, np.int64)
                if kind == 1:
                    pred = a
                elif kind == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
                cur[x : x + bpp] = (cur[x : x + bpp] + pred) % 256
        out[y] = prev = cur % 256
    raw = out.astype(np.uint8)
    arr = raw.view(">u2").astype(np.uint16) if depth == 16 else raw
    return arr.reshape(height, width, 3) if colour == 2 else arr.reshape(height, width)


def ours(path: Path, choice: display.VoiChoice, frame: int = 0, bits: int = 8) -> np.ndarray:
    ds = decode.read(path)
    info = decode.pixel_info(ds, path, 10**9)
    arrays = list(decode.frames(ds, path, info, [frame]))
    return display.render(ds, info, arrays, path, choice, bits)[0].pixels


def assert_close(a: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert a.shape == ref.shape, f"{what}: shape {a.shape} vs DCMTK {ref.shape}"
    diff = np.abs(a.astype(np.int64) - ref.astype(np.int64))
    same = float((diff == 0).mean())
    assert same >= 0.999 and diff.max() <= 1, (
        f"{what}: {same:.4%} identical, max difference {diff.max()}"
    )


def voi_options(path: Path) -> list[tuple[list[str], display.VoiChoice]]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    out: list[tuple[list[str], display.VoiChoice]] = [(["+Wm"], display.VoiChoice("minmax"))]
    if "WindowCenter" in ds:
        out.append((["+Wi", "1"], display.VoiChoice("window", 0)))
    if "VOILUTSequence" in ds:
        out.append((["+Wl", "1"], display.VoiChoice("lut", 0)))
    return out


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_file_matches_dcmtk(name: str, tmp_path: Path) -> None:
    path = TEST_FILES / name
    compared = 0
    for opts, choice in voi_options(path):
        ref = dcmtk_render(path, opts, tmp_path)
        if ref is None:
            continue
        compared += 1
        if name in KNOWN:
            if KNOWN[name] == LOSSY_12BIT:
                diff = np.abs(ours(path, choice).astype(int) - ref.astype(int))
                assert diff.max() <= 2 and (diff == 0).mean() > 0.95, name
            elif name.startswith("rtdose_expb"):
                twin = TEST_FILES / name.replace("_expb", "")
                assert np.array_equal(ours(path, choice), ours(twin, choice))
            else:
                with pytest.raises(decode.ExportError, match=r"\(00|\(7FE0"):
                    ours(path, choice)
            continue
        assert_close(ours(path, choice), ref, f"{name} {' '.join(opts)}")
        # 16-bit output too (dcmj2pnm +on2 / +opw; colour as 48-bit RGB)
        ref16 = dcmtk_render(path, opts, tmp_path, bits=16)
        assert ref16 is not None
        assert_close(ours(path, choice, bits=16), ref16, f"{name} {' '.join(opts)} 16-bit")
    if not compared:
        pytest.skip(f"DCMTK does not render {name}")


# ------------------------------------------------------------------ generated objects


def _generated(tmp: Path) -> dict[str, Path]:
    return {
        "ct": data.ct(tmp / "ct.dcm"),
        "ct_sigmoid": data.ct(tmp / "sig.dcm", VOILUTFunction="SIGMOID"),
        "ct_inverse": data.ct(tmp / "inv.dcm", PresentationLUTShape="INVERSE"),
        "mr_signed": data.mr(tmp / "mr.dcm"),
        "cr_mono1": data.cr(tmp / "cr.dcm"),
        "cr_mono1_inverse": data.cr(tmp / "cri.dcm", PresentationLUTShape="INVERSE"),
        "cr_mono1_identity": data.cr(tmp / "crd.dcm", PresentationLUTShape="IDENTITY"),
        "voi_lut": data.voi_lut(tmp / "voi.dcm"),
        "us_rgb_multiframe": data.us_multiframe(tmp / "us.dcm"),
        "us_gray_multiframe": data.us_gray_multiframe(tmp / "usg.dcm"),
        "modality_lut": data.modality_lut(tmp / "mlut.dcm"),
        "signed_12_bit_junk_high_bits": data.high_bits(tmp / "hb.dcm"),
        "modality_lut_8bit_first_100": data.modality_lut_8bit(tmp / "mlut8.dcm"),
        "voi_lut_inverse": data.voi_lut_inverse(tmp / "voiinv.dcm", PresentationLUTShape="INVERSE"),
        "voi_lut_mono1": data.voi_lut_inverse(tmp / "voim1.dcm", "MONOCHROME1"),
        "voi_lut_signed_input": data.voi_lut_signed_input(tmp / "voisgn.dcm"),
    }


CASES = [
    (["+Wi", "1"], display.VoiChoice("window", 0)),
    (["+Wi", "2"], display.VoiChoice("window", 1)),
    (["+Wm"], display.VoiChoice("minmax")),
    (["+Wl", "1"], display.VoiChoice("lut", 0)),
    (["+Ww", "40", "400"], display.VoiChoice("user", center=40, width=400)),
]


@pytest.mark.parametrize("bits", [8, 16])
def test_generated_objects_match_dcmtk(tmp_path: Path, bits: int) -> None:
    compared = []
    for name, path in _generated(tmp_path).items():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        for opts, choice in CASES:
            for frame in range(frames):
                ref = dcmtk_render(path, opts, tmp_path, frame, bits)
                if ref is None:
                    continue
                got = ours(path, choice, frame, bits)
                assert_close(got, ref, f"{name} {' '.join(opts)} frame {frame + 1} {bits}-bit")
                compared.append((name, opts[0]))
    names = {n for n, _ in compared}
    assert names >= {"ct", "ct_sigmoid", "ct_inverse", "mr_signed", "cr_mono1", "voi_lut"}
    assert names >= {"cr_mono1_inverse", "cr_mono1_identity", "modality_lut"}
    assert names >= {"us_gray_multiframe", "signed_12_bit_junk_high_bits"}
    assert ("voi_lut", "+Wl") in compared and ("ct", "+Ww") in compared
    for name in ("voi_lut_inverse", "voi_lut_mono1", "voi_lut_signed_input"):
        assert (name, "+Wl") in compared, name
    assert ("modality_lut_8bit_first_100", "+Wm") in compared


def test_ct_window_40_400_exact(tmp_path: Path) -> None:
    """The classic: CT with rescale -1024 and window 40/400, bit-identical to dcmj2pnm +Wi 1."""
    path = data.ct(tmp_path / "ct.dcm")
    ref = dcmtk_render(path, ["+Wi", "1"], tmp_path)
    assert ref is not None
    got = ours(path, display.VoiChoice())
    assert np.array_equal(got, ref)
    assert 0 < float((got == 0).mean()) < 0.9 and float((got == 255).mean()) < 0.9


def test_native_ybr_full_matches_dcmtk(tmp_path: Path) -> None:
    """Native YBR_FULL: every (Cb, Cr) pair, and random colours, as dcmj2pnm converts them."""
    cb, cr = np.meshgrid(np.arange(256), np.arange(256))
    for y in (0, 77, 128, 255):
        grid = np.stack([np.full_like(cb, y), cb, cr], axis=-1).astype(np.uint8)
        ds = data.dataset(grid, photometric="YBR_FULL", modality="OT", sop_class=SC)
        path = data.write(ds, tmp_path / f"grid{y}.dcm")
        ref = dcmtk_render(path, ["+Wm"], tmp_path)
        assert ref is not None and np.array_equal(ours(path, display.VoiChoice()), ref)
    path = data.ybr_full(tmp_path / "ybr.dcm")
    ref = dcmtk_render(path, ["+Wm"], tmp_path)
    assert ref is not None and np.array_equal(ours(path, display.VoiChoice()), ref)


def test_fractional_rescale_keeps_precision_dcmtk_truncates(tmp_path: Path) -> None:
    """DCMTK 3.6.7 truncates rescaled values to integers (a PET image with slope 0.001
    collapses to a few grey levels); we keep them as floats. 8-bit output stays within 1."""
    path = data.pet_like(tmp_path / "pt.dcm")
    ref = dcmtk_render(path, ["+Wi", "1"], tmp_path)
    assert ref is not None
    diff = np.abs(ours(path, display.VoiChoice()).astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.98
    ds = pydicom.dcmread(path)
    ds.RescaleSlope, ds.RescaleIntercept = "0.001", "0"
    ds.WindowCenter, ds.WindowWidth = 15, 30
    fine = data.write(ds, tmp_path / "suv.dcm")
    theirs = dcmtk_render(fine, ["+Wi", "1"], tmp_path, bits=16)
    assert theirs is not None and len(np.unique(theirs)) <= 31
    assert len(np.unique(ours(fine, display.VoiChoice(), bits=16))) > 1000


# ------------------------------------------------------------------ pixel layouts and codecs


def _random_gray(path: Path, seed: int, shape: tuple[int, int]) -> Path:
    """An 8-bit MONOCHROME2 Secondary Capture of random pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)
    return data.write(data.dataset(pixels, modality="OT", sop_class=SC), path)


def _dcmtk_convert(args: list[str], src: Path, dst: Path) -> Path:
    subprocess.run([tool(args[0]), *args[1:], str(src), str(dst)], check=True, timeout=60)
    return dst


def test_high_bit_above_bits_stored_matches_dcmtk(tmp_path: Path) -> None:
    """Bits Stored 12 with High Bit 15 (the stored bits at the top of each word, junk below):
    native, RLE, JPEG lossless and JPEG-LS twins all render as dcmj2pnm renders them."""
    rng = np.random.default_rng(21)
    junk = rng.integers(0, 16, (33, 31)).astype(np.uint16)
    unsigned = rng.integers(0, 4096, (33, 31)).astype(np.uint16)
    signed = rng.integers(-2048, 2048, (33, 31)).astype(np.int16).view(np.uint16) & 0x0FFF
    cases = {"unsigned": (unsigned, np.uint16, 2048), "signed": (signed, np.int16, 0)}
    compared = 0
    for name, (stored, dtype, center) in cases.items():
        words = ((stored << 4) | junk).view(dtype)
        ds = data.dataset(words, bits_stored=12, WindowCenter=center, WindowWidth=3000)
        ds.HighBit = 15
        native = data.write(ds, tmp_path / f"{name}.dcm")
        twins = [native]
        for codec in (["dcmcrle"], ["dcmcjpeg", "+e1"], ["dcmcjpls"]):
            twins.append(_dcmtk_convert(codec, native, tmp_path / f"{name}-{codec[0]}.dcm"))
        for path in twins:
            for opts, choice in CASES[:1] + CASES[2:3]:  # +Wi 1, +Wm
                ref = dcmtk_render(path, opts, tmp_path)
                assert ref is not None, path
                assert_close(ours(path, choice), ref, f"{path.name} {' '.join(opts)}")
                compared += 1
    assert compared == 16


def test_one_bit_multiframe_frames_off_byte_boundaries_match_dcmtk(tmp_path: Path) -> None:
    """1-bit frames of 7 x 9 = 63 bits: frame 2 starts in the middle of a byte."""
    from pydicom.pixels import pack_bits

    bits = np.random.default_rng(22).integers(0, 2, (3, 7, 9)).astype(np.uint8)
    ds = data.dataset(bits, modality="OT", sop_class=SC)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = pack_bits(bits.ravel())
    path = data.write(ds, tmp_path / "bits.dcm")
    for frame in range(3):
        ref = dcmtk_render(path, ["+Wm"], tmp_path, frame)
        assert ref is not None
        got = ours(path, display.VoiChoice("minmax"), frame)
        assert np.array_equal(got, ref) and np.array_equal(got > 0, bits[frame] > 0), frame


def test_12_bit_lossy_jpeg_colour_renders_like_dcmtk(tmp_path: Path) -> None:
    """dcmcjpeg +ee on 16-bit RGB writes 12-bit YBR_FULL_422 JPEG; pydicom converts YBR only
    for 8-bit samples, so this used to be refused. Lossy 12-bit: IDCTs differ by 1."""
    y, x = np.mgrid[0:64, 0:64]
    rgb = np.stack([x * 1000, y * 900, (x + y) * 500], axis=-1).astype(np.uint16)
    native = data.write(
        data.dataset(rgb, photometric="RGB", modality="OT", sop_class=SC), tmp_path / "rgb.dcm"
    )
    path = _dcmtk_convert(["dcmcjpeg", "+ee"], native, tmp_path / "ybr12.dcm")
    assert pydicom.dcmread(path).PhotometricInterpretation == "YBR_FULL_422"
    ref = dcmtk_render(path, [], tmp_path)
    assert ref is not None
    diff = np.abs(ours(path, display.VoiChoice()).astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.9


def _cut(path: Path, keep: float, dst: Path) -> Path:
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(path)
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    ds.PixelData = encapsulate([frame[: int(len(frame) * keep)]])
    return data.write(ds, dst)


def test_truncated_jpeg_family_streams_are_refused_like_dcmtk(tmp_path: Path) -> None:
    """Cut JPEG baseline / lossless / JPEG-LS / JPEG 2000 streams decode without an error
    in pylibjpeg and CharLS (grey or repeated rows); DCMTK refuses them, and so do we."""
    gray = _random_gray(tmp_path / "gray.dcm", 23, (31, 33))
    streams = {
        "baseline": _dcmtk_convert(["dcmcjpeg", "+eb"], gray, tmp_path / "b.dcm"),
        "lossless": _dcmtk_convert(
            ["dcmcjpeg", "+e1"], data.ct(tmp_path / "ct.dcm"), tmp_path / "l.dcm"
        ),
        "jpeg-ls": _dcmtk_convert(["dcmcjpls"], gray, tmp_path / "ls.dcm"),
    }
    streams["jpeg2000"] = TEST_FILES / "MR_small_jp2klossless.dcm"
    for name, path in streams.items():
        ours(path, display.VoiChoice("minmax"))  # whole: renders
        cut = _cut(path, 0.6, tmp_path / f"cut-{name}.dcm")
        with pytest.raises(
            decode.BadPixelData, match=r"\(7FE0,0010\) PixelData frame 1: .* no end marker"
        ):
            ours(cut, display.VoiChoice("minmax"))
        if name != "jpeg2000":  # this DCMTK has no JPEG 2000 decoder
            assert dcmtk_render(cut, ["+Wm"], tmp_path) is None, name


@pytest.mark.parametrize("shared_rescale", [False, True])
def test_enhanced_multiframe_uses_functional_groups_like_classic_twins(
    tmp_path: Path, shared_rescale: bool
) -> None:
    """Enhanced CT: each frame's rescale (Pixel Value Transformation) and window (Frame VOI
    LUT) live in the functional groups (PS3.3 C.7.6.16). Every frame renders as dcmj2pnm
    renders a classic CT with those values at the top level (+Wi 1, and a user window on
    HU). DCMTK 3.6.7 itself reads only a shared rescale and no functional-group window."""
    path = data.enhanced_ct(tmp_path / "enhanced.dcm", shared_rescale)
    ds = decode.read(path)
    info = decode.pixel_info(ds, path, 10**9)
    arrays = list(decode.frames(ds, path, info))
    for choice, opts in (
        (display.VoiChoice(), ["+Wi", "1"]),
        (display.VoiChoice("user", center=40, width=400), ["+Ww", "40", "400"]),
    ):
        rendered = display.render(ds, info, arrays, path, choice, 8)
        assert [r.frame for r in rendered] == [0, 1, 2]
        for frame, r in enumerate(rendered):
            twin = data.classic_twin(path, frame, tmp_path / f"twin{frame}.dcm")
            ref = dcmtk_render(twin, opts, tmp_path)
            assert ref is not None
            assert np.array_equal(r.pixels, ref), (frame, opts)
            if choice.kind == "auto":
                _, center, width = data.ENHANCED_FRAMES[frame]
                assert r.voi == f"window C={center} W={width}"
    if shared_rescale:  # what DCMTK reads itself agrees too
        ref = dcmtk_render(path, ["+Ww", "40", "400"], tmp_path, frame=1)
        assert np.array_equal(ours(path, display.VoiChoice("user", center=40, width=400), 1), ref)


def test_ow_lut_data_of_big_endian_files_matches_dcmtk(tmp_path: Path) -> None:
    """OW LUT Data keeps the file's byte order in pydicom: VOI LUT, Modality LUT and
    palettes of an Explicit VR Big Endian file (dcmconv +tb) render as their little-endian
    originals do, and as dcmj2pnm renders them."""
    for name, little in data.ow_luts(tmp_path).items():
        big = _dcmtk_convert(["dcmconv", "+tb"], little, tmp_path / f"{name}-be.dcm")
        ds = pydicom.dcmread(big, stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2"
        gray = ds.PhotometricInterpretation != "PALETTE COLOR"
        opts, choice = (
            (["+Wl", "1"], display.VoiChoice("lut", 0))
            if "VOILUTSequence" in ds
            else (
                (["+Wi", "1"], display.VoiChoice("window", 0))
                if gray
                else ([], display.VoiChoice())
            )
        )
        got = ours(big, choice)
        assert np.array_equal(got, ours(little, choice)), name
        if name == "segmented_palette":
            continue  # dcmj2pnm: "segmented palettes not yet supported"
        ref = dcmtk_render(big, opts, tmp_path)
        assert ref is not None, name
        assert np.array_equal(got, ref), name


def test_ybr_full_through_each_lossless_codec_matches_dcmtk(tmp_path: Path) -> None:
    """YBR_FULL kept as YBR by the codec (RLE, JPEG-LS: converted with dcmimgle's
    arithmetic) or converted by it (JPEG lossless: IJG's), bit-identical either way."""
    y, x = np.mgrid[0:20, 0:22]
    ybr = np.stack([(x * 11) % 256, (y * 12) % 256, ((x + y) * 5) % 256], -1).astype(np.uint8)
    native = data.write(
        data.dataset(ybr, photometric="YBR_FULL", modality="OT", sop_class=SC),
        tmp_path / "ybr.dcm",
    )
    for codec in (["dcmcrle"], ["dcmcjpeg", "+el"], ["dcmcjpls"]):
        path = _dcmtk_convert(codec, native, tmp_path / f"ybr-{codec[0]}.dcm")
        assert pydicom.dcmread(path).PhotometricInterpretation == "YBR_FULL"
        ref = dcmtk_render(path, [], tmp_path)
        assert ref is not None and np.array_equal(ours(path, display.VoiChoice()), ref), codec


def test_palette_with_signed_indices_matches_dcmtk(tmp_path: Path) -> None:
    """Pixel Representation 1 with the descriptor's first mapped value written US (65436
    for -100): indices -100..155 map to entries 0..255, as dcmj2pnm maps them."""
    rng = np.random.default_rng(24)
    ds = data.dataset(
        rng.integers(-100, 156, (10, 12)).astype(np.int16),
        photometric="PALETTE COLOR",
        modality="OT",
        sop_class=SC,
    )
    data.set_palette(
        ds,
        [256, 65436, 16],
        lambda i: np.asarray((np.arange(256) * (i + 1) * 251) % 65536, "<u2").tobytes(),
    )
    path = data.write(ds, tmp_path / "palette.dcm")
    ref = dcmtk_render(path, [], tmp_path)
    assert ref is not None and np.array_equal(ours(path, display.VoiChoice()), ref)


def test_native_ybr_partial_422_matches_dcmtk(tmp_path: Path) -> None:
    """Retired YBR_PARTIAL_422 (old ultrasound): every (Cb, Cr) pair at several Y, 4:2:2 on
    the wire, bit-identical to dcmj2pnm (it was refused as not rendered)."""
    cb, cr = np.meshgrid(np.arange(256), np.arange(256))
    for y in (0, 16, 128, 235, 255):
        wire = np.empty((256, 1024), np.uint8)
        wire[:, 0::4], wire[:, 1::4] = y, min(255, y + 3)  # Y1, Y2 of each pixel pair
        wire[:, 2::4], wire[:, 3::4] = cb, cr
        ds = data.dataset(
            np.zeros((256, 512, 3), np.uint8),
            photometric="YBR_PARTIAL_422",
            modality="OT",
            sop_class=SC,
        )
        ds.PixelData = wire.tobytes()
        path = data.write(ds, tmp_path / f"partial{y}.dcm")
        ref = dcmtk_render(path, [], tmp_path)
        assert ref is not None and np.array_equal(ours(path, display.VoiChoice()), ref), y


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("function", ["LINEAR", "SIGMOID"])
def test_constant_image_min_max_matches_dcmtk(
    tmp_path: Path, photometric: str, function: str
) -> None:
    """A blank image (every pixel 100): min-max gives C=100.5 W=1, which puts every pixel on
    the window's lower edge (PS3.3 C.11.2.1.2.1: x <= c - 0.5 -> minimum). It rendered white
    on MONOCHROME2 (black on MONOCHROME1); dcmj2pnm renders it as the minimum."""
    ds = data.dataset(
        np.full((8, 10), 100, np.uint16),
        photometric=photometric,
        bits_stored=12,
        modality="OT",
        VOILUTFunction=function,
    )
    path = data.write(ds, tmp_path / "blank.dcm")
    for bits in (8, 16):
        ref = dcmtk_render(path, ["+Wm"], tmp_path, bits=bits)
        assert ref is not None
        got = ours(path, display.VoiChoice(), bits=bits)  # the default: no window -> min-max
        assert np.array_equal(got, ref), (bits, np.unique(got), np.unique(ref))


def test_compressed_frame_not_matching_the_description_is_refused_by_element(
    tmp_path: Path,
) -> None:
    """A JPEG, JPEG-LS or JPEG 2000 frame whose header disagrees with Rows, Columns or
    Samples per Pixel: refused naming both sides (the decoders said "could not broadcast
    input array from shape (1023,) into shape (1320,)")."""
    gray = _random_gray(tmp_path / "gray.dcm", 25, (32, 40))
    streams = {
        "baseline": _dcmtk_convert(["dcmcjpeg", "+eb"], gray, tmp_path / "b.dcm"),
        "jpeg-ls": _dcmtk_convert(["dcmcjpls"], gray, tmp_path / "ls.dcm"),
        "jpeg2000": TEST_FILES / "MR_small_jp2klossless.dcm",
    }
    for name, path in streams.items():
        ds = pydicom.dcmread(path)
        cols, rows = ds.Columns, ds.Rows
        for change, value in (("Rows", rows // 2), ("Columns", cols + 2), ("SamplesPerPixel", 3)):
            bad = pydicom.dcmread(path)
            setattr(bad, change, value)
            if change == "SamplesPerPixel":
                bad.PhotometricInterpretation, bad.PlanarConfiguration = "RGB", 0
            target = data.write(bad, tmp_path / f"{name}-{change}.dcm")
            with pytest.raises(decode.BadPixelData) as info:
                ours(target, display.VoiChoice("minmax"))
            message = str(info.value)
            assert f"holds {cols} x {rows} pixels with 1 component(s)" in message, message
            assert f"(0028,0011) Columns {bad.Columns} x (0028,0010) Rows {bad.Rows}" in message
            assert f"(0028,0002) SamplesPerPixel {bad.SamplesPerPixel}" in message


def test_min_max_ignores_the_pad_byte_of_odd_length_pixel_data(tmp_path: Path) -> None:
    """29 x 29 8-bit pixels need a pad byte (0). dcmj2pnm +Wm counts it as a pixel (the
    window becomes 0..102 and the image goes grey); we use the 841 pixels only, which is
    what dcmj2pnm renders when the pad byte holds an in-range value."""
    pixels = np.random.default_rng(26).integers(100, 103, (29, 29)).astype(np.uint8)
    path = data.write(data.dataset(pixels, modality="OT", sop_class=SC), tmp_path / "odd.dcm")
    got = ours(path, display.VoiChoice("minmax"))
    assert set(np.unique(got)) == {0, 127, 255}
    ds = pydicom.dcmread(path)
    assert len(ds.PixelData) == 842 and ds.PixelData[-1:] == b"\x00"
    ds.PixelData = ds.PixelData[:-1] + b"\x65"  # pad byte 101: inside the pixels' range
    neutral = data.write(ds, tmp_path / "neutral.dcm")
    ref = dcmtk_render(neutral, ["+Wm"], tmp_path)
    assert ref is not None and np.array_equal(got, ref)
    skewed = dcmtk_render(path, ["+Wm"], tmp_path)  # DCMTK with the 0 pad byte
    assert skewed is not None and not np.array_equal(got, skewed)


def test_16_bit_lossless_jpeg_ybr_renders_as_its_native_twin(tmp_path: Path) -> None:
    """16-bit YBR_FULL through JPEG lossless (dcmcjpeg +el): pydicom converts YBR only for
    8-bit samples, so this was refused. Lossless, it must render exactly as the native
    object; dcmj2pnm's IJG converts the colour itself and differs by 1 on < 1 % of pixels."""
    y, x = np.mgrid[0:32, 0:34]
    ybr = np.stack([x * 1900, y * 1800, (x + y) * 900], axis=-1).astype(np.uint16)
    native = data.write(
        data.dataset(ybr, photometric="YBR_FULL", modality="OT", sop_class=SC),
        tmp_path / "ybr16.dcm",
    )
    path = _dcmtk_convert(["dcmcjpeg", "+el"], native, tmp_path / "ybr16-ll.dcm")
    got = ours(path, display.VoiChoice())
    assert np.array_equal(got, ours(native, display.VoiChoice()))
    ref = dcmtk_render(native, [], tmp_path)
    assert ref is not None and np.array_equal(got, ref)
    theirs = dcmtk_render(path, [], tmp_path)
    assert theirs is not None
    diff = np.abs(got.astype(int) - theirs.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.98


def test_palette_of_more_than_256_packed_8_bit_entries_matches_dcmtk(tmp_path: Path) -> None:
    """1024 8-bit entries packed two to a word, 16-bit indices: pydicom indexed them with
    uint8 (entry 958 came out as entry 958 % 256). Random entries, so no period hides it;
    little and big endian."""
    rng = np.random.default_rng(27)
    ds = data.dataset(
        rng.integers(40, 40 + 1024, (20, 24)).astype(np.uint16),
        photometric="PALETTE COLOR",
        modality="OT",
        sop_class=SC,
    )
    data.set_palette(
        ds, [1024, 40, 8], lambda i: rng.integers(0, 256, 1024).astype(np.uint8).tobytes()
    )
    little = data.write(ds, tmp_path / "palette.dcm")
    big = _dcmtk_convert(["dcmconv", "+tb"], little, tmp_path / "palette-be.dcm")
    expected = np.stack(
        [
            np.frombuffer(ds[f"{c}PaletteColorLookupTableData"].value, np.uint8)[
                ds.pixel_array - 40
            ]
            for c in ("Red", "Green", "Blue")
        ],
        axis=-1,
    )
    for path in (little, big):
        ref = dcmtk_render(path, [], tmp_path)
        got = ours(path, display.VoiChoice())
        assert ref is not None and np.array_equal(got, ref) and np.array_equal(got, expected)


def test_16_bit_colour_png_keeps_the_16_bits_dcmtk_writes(tmp_path: Path) -> None:
    """With 16-bit output dcmj2pnm (+on2) writes colour as 48-bit RGB; our PNG writer cut
    the rendered 16-bit samples to 8 bits, so 12/16-bit RGB, YBR and 16-bit palette entries
    lost their precision. The PNG files now carry DCMTK's values exactly."""
    from node.config import ExportSection
    from node.export.exporter import Exporter

    rng = np.random.default_rng(31)
    wide = rng.integers(0, 65536, (2, 9, 11, 3)).astype(np.uint16)
    palette = data.dataset(
        rng.integers(0, 256, (9, 11)).astype(np.uint8),
        photometric="PALETTE COLOR",
        modality="OT",
        sop_class=SC,
    )
    data.set_palette(
        palette,
        [256, 0, 16],
        lambda i: np.asarray((np.arange(256) * (i + 1) * 251 + 7) % 65536, "<u2").tobytes(),
    )
    sources = {
        "rgb16": data.dataset(wide, photometric="RGB", modality="OT", sop_class=SC),
        "rgb12": data.dataset(
            wide[0] >> 4, photometric="RGB", modality="OT", sop_class=SC, bits_stored=12
        ),
        "ybr12": data.dataset(
            wide[1] >> 4, photometric="YBR_FULL", modality="OT", sop_class=SC, bits_stored=12
        ),
        "rgb8": data.dataset(
            (wide[0] >> 8).astype(np.uint8), photometric="RGB", modality="OT", sop_class=SC
        ),
        "palette": palette,
    }
    cfg = ExportSection(dir=tmp_path / "out", bits=16)
    for name, ds in sources.items():
        path = data.write(ds, tmp_path / f"{name}.dcm")
        written = Exporter(cfg, fsync=False).export_instance(path)
        frames = int(ds.get("NumberOfFrames", 1))
        assert len(written) == frames, name
        for frame, png_path in enumerate(sorted(written)):
            ref = dcmtk_render(path, [], tmp_path, frame, bits=16)
            assert ref is not None and ref.shape == (9, 11, 3), name
            got = read_png(png_path.read_bytes())
            assert got.dtype == np.uint16 and np.array_equal(got, ref), f"{name} {frame + 1}"
        # more than 8 bits were at stake (8-bit samples v become v * 257)
        assert (ref % 257).any() == (name != "rgb8"), name


def _overlay(ds: pydicom.Dataset, mask: np.ndarray, group: int = 0x6000, **extra: Any) -> Path:
    """Add a graphics overlay plane (60xx) holding ``mask`` (frames first if 3-D)."""
    from pydicom.pixels import pack_bits

    tag = group << 16
    ds.add_new(tag | 0x0010, "US", mask.shape[-2])
    ds.add_new(tag | 0x0011, "US", mask.shape[-1])
    ds.add_new(tag | 0x0040, "CS", "G")
    ds.add_new(tag | 0x0050, "SS", list(extra.pop("origin", (3, 4))))
    ds.add_new(tag | 0x0100, "US", 1)
    ds.add_new(tag | 0x0102, "US", 0)
    if "frames" in extra:
        ds.add_new(tag | 0x0015, "IS", extra.pop("frames"))
    if "first" in extra:
        ds.add_new(tag | 0x0051, "US", extra.pop("first"))
    ds.add_new(tag | 0x3000, "OW", pack_bits(mask.ravel()))
    return ds


def test_graphics_overlays_are_burnt_in_like_dcmtk(tmp_path: Path) -> None:
    """60xx,3000 overlays (dcmj2pnm shows them by default): placed by Overlay Origin (also
    partly outside the image), on MONOCHROME1 and in 16 bits, and on multi-frame images the
    frames (60xx,0015) Number of Frames in Overlay and (60xx,0051) Image Frame Origin say:
    a one-frame overlay bound to frame 3 was burnt into every frame."""
    rng = np.random.default_rng(32)
    mask = np.zeros((2, 10, 12), np.uint8)
    mask[0, 2:5, 1:9] = 1
    mask[1, :, 2] = 1
    mask[0, 0, 0] = mask[1, 9, 11] = 1
    image = rng.integers(0, 4096, (32, 40)).astype(np.uint16)
    cine = rng.integers(0, 4096, (3, 32, 40)).astype(np.uint16)
    window = {"WindowCenter": 2000, "WindowWidth": 4000}
    single = {
        "plain": _overlay(data.dataset(image, **window), mask[0]),
        "corner": _overlay(data.dataset(image, **window), mask[0], origin=(-1, -3)),
        "edge": _overlay(data.dataset(image, **window), mask[0], origin=(28, 35)),
        "mono1": _overlay(data.dataset(image, photometric="MONOCHROME1", **window), mask[0]),
        "two": _overlay(_overlay(data.dataset(image, **window), mask[0]), mask[1], 0x6002),
    }
    multi = {
        "every_frame": _overlay(data.dataset(cine, **window), mask[0]),
        "two_frames": _overlay(data.dataset(cine, **window), mask, frames=2, first=2),
        "frame_1_only": _overlay(data.dataset(cine, **window), mask[:1], frames=1),
        "frame_3_only": _overlay(data.dataset(cine, **window), mask[1:], frames=1, first=3),
    }
    shown = {}
    for name, ds in {**single, **multi}.items():
        path = data.write(ds, tmp_path / f"{name}.dcm")
        for frame in range(int(ds.get("NumberOfFrames", 1))):
            for bits in (8, 16) if name in single else (8,):
                ref = dcmtk_render(path, ["+Wi", "1"], tmp_path, frame, bits)
                bare = dcmtk_render(path, ["+Wi", "1", "-O"], tmp_path, frame, bits)
                assert ref is not None and bare is not None
                got = ours(path, display.VoiChoice("window", 0), frame, bits)
                assert np.array_equal(got, ref), f"{name} frame {frame + 1} {bits}-bit"
                shown[(name, frame)] = int((ref != bare).sum())
    assert all(shown[(name, 0)] > 10 for name in single)
    assert [shown[("frame_3_only", f)] > 0 for f in range(3)] == [False, False, True]
    assert [shown[("frame_1_only", f)] > 0 for f in range(3)] == [True, False, False]
    assert [shown[("two_frames", f)] > 0 for f in range(3)] == [False, True, True]
    assert all(shown[("every_frame", f)] > 10 for f in range(3))


def test_jpeg_ls_with_bits_above_bits_stored_matches_dcmtk(tmp_path: Path) -> None:
    """Bits Stored 12 in 16-bit words with the top 4 bits set (junk, embedded overlays):
    dcmcjpls then writes a JPEG-LS stream of precision 16 and CharLS returns whole words.
    They were rendered as 16-bit values (all white through the window); dcml2pnm keeps the
    Bits Stored field, as for native, RLE and JPEG lossless data."""
    words = np.random.default_rng(33).integers(0, 65536, (20, 21)).astype(np.uint16)
    compared = 0
    for name, arr, center in (("unsigned", words, 2000), ("signed", words.view(np.int16), 0)):
        ds = data.dataset(arr, bits_stored=12, WindowCenter=center, WindowWidth=4000)
        native = data.write(ds, tmp_path / f"{name}.dcm")
        jls = _dcmtk_convert(["dcmcjpls"], native, tmp_path / f"{name}-jls.dcm")
        for opts, choice in CASES[:1] + CASES[2:3]:  # +Wi 1, +Wm
            ref = dcmtk_render(jls, opts, tmp_path)
            assert ref is not None
            assert np.array_equal(ours(jls, choice), ref), f"{name} {opts}"
            assert np.array_equal(ours(native, choice), ref), f"{name} {opts} native"
            compared += 1
    assert compared == 4


def _embedded_overlay(ds: pydicom.Dataset, bit: int, **extra: Any) -> pydicom.Dataset:
    """An embedded overlay plane (retired): no Overlay Data, bit ``bit`` of each word."""
    tag = 0x6000 << 16
    ds.add_new(tag | 0x0010, "US", extra.pop("rows", ds.Rows))
    ds.add_new(tag | 0x0011, "US", extra.pop("columns", ds.Columns))
    ds.add_new(tag | 0x0040, "CS", "G")
    ds.add_new(tag | 0x0050, "SS", list(extra.pop("origin", (1, 1))))
    ds.add_new(tag | 0x0100, "US", ds.BitsAllocated)
    ds.add_new(tag | 0x0102, "US", bit)
    if "frames" in extra:
        ds.add_new(tag | 0x0015, "IS", extra.pop("frames"))
    return ds


def test_embedded_overlays_are_burnt_in_like_dcmtk(tmp_path: Path) -> None:
    """Overlays in the unused high bits of Pixel Data (60xx,0102 Overlay Bit Position, no
    60xx,3000), as older MR/CT archives hold them: dcmj2pnm shows them and we did not.
    16- and 8-bit words, signed, High Bit 15 (the overlay in the low bits), a plane smaller
    than the image, multi-frame with and without (60xx,0015), compressed twins; a bit inside
    the stored value is not an overlay (DCMTK ignores it, so do we)."""
    rng = np.random.default_rng(34)
    cine = rng.integers(0, 4096, (3, 32, 40)).astype(np.uint16)
    for f in range(3):
        cine[f, 3 + 5 * f : 8 + 5 * f, 4:20] |= 1 << 13
    signed = (cine[0].astype(np.int16) - 2048).view(np.uint16) & 0x0FFF | cine[0] & 0x2000
    low = cine[0] << 4
    low[10:14, 10:30] |= 1 << 2
    small = rng.integers(0, 128, (32, 40)).astype(np.uint8)
    small[5:9, 5:30] |= 0x80
    window = {"WindowCenter": 2000, "WindowWidth": 4000}
    low_ds = _embedded_overlay(data.dataset(low, bits_stored=12, **window), 2)
    low_ds.HighBit = 15
    cases = {
        "bit13": (_embedded_overlay(data.dataset(cine[0], bits_stored=12, **window), 13), 1),
        "signed": (
            _embedded_overlay(
                data.dataset(
                    signed.view(np.int16), bits_stored=12, WindowCenter=0, WindowWidth=4000
                ),
                13,
            ),
            1,
        ),
        "high_bit_15": (low_ds, 1),
        "eight_bit": (_embedded_overlay(data.dataset(small, bits_stored=7, **window), 7), 1),
        "smaller_plane": (
            _embedded_overlay(
                data.dataset(cine[0], bits_stored=12, **window),
                13,
                rows=20,
                columns=30,
                origin=(5, 6),
            ),
            1,
        ),
        "cine_first_plane": (
            _embedded_overlay(data.dataset(cine, bits_stored=12, **window), 13),
            3,
        ),
        "cine_two_frames": (
            _embedded_overlay(data.dataset(cine, bits_stored=12, **window), 13, frames=2),
            3,
        ),
        "inside_stored_bits": (_embedded_overlay(data.dataset(cine[0], **window), 13), 1),
    }
    shown = {}
    for name, (ds, frames) in cases.items():
        native = data.write(ds, tmp_path / f"{name}.dcm")
        paths = [native]
        if name in ("bit13", "high_bit_15"):  # DCMTK reads them from single frames only
            for codec in (["dcmcrle"], ["dcmcjpeg", "+e1"], ["dcmcjpls"]):
                paths.append(_dcmtk_convert(codec, native, tmp_path / f"{name}-{codec[0]}.dcm"))
        for path in paths:
            for frame in range(frames):
                ref = dcmtk_render(path, ["+Wi", "1"], tmp_path, frame)
                bare = dcmtk_render(path, ["+Wi", "1", "-O"], tmp_path, frame)
                assert ref is not None and bare is not None
                got = ours(path, display.VoiChoice("window", 0), frame)
                assert np.array_equal(got, ref), f"{path.name} frame {frame + 1}"
                shown[(path.name, frame)] = int((ref != bare).sum())
    assert shown[("inside_stored_bits.dcm", 0)] == 0
    assert shown[("cine_two_frames.dcm", 2)] == 0 < shown[("cine_two_frames.dcm", 1)]
    visible = [v for (name, frame), v in shown.items() if frame == 0 and "inside" not in name]
    assert len(visible) == 13 and min(visible) > 50
    assert min(shown[("cine_first_plane.dcm", f)] for f in range(3)) > 50


@pytest.mark.parametrize(
    ("descriptor", "words", "bits_per_entry"),
    [
        ([256, 0, 12], 256, 12),  # 12-bit entries (pydicom: "data type 'uint12'")
        ([256, 0, 10], 256, 10),
        ([256, 0, 16], 200, 16),  # LUT Data shorter than the descriptor says
        ([256, 0, 16], 300, 16),  # ... longer
        ([0, 0, 16], 20, 16),  # 0 (65536) entries, 20 given
        ([256, 0, 8], 200, 8),  # 8-bit entries one per word, fewer than described
    ],
)
def test_palette_data_not_as_described_renders_like_dcmtk(
    tmp_path: Path, descriptor: list[int], words: int, bits_per_entry: int
) -> None:
    """Palette Color LUT Data of other than 8/16 bits per entry, or whose length disagrees
    with the descriptor: pydicom sized the entries from the data length (400 bytes for 256
    entries: 'uint12') and the export failed with a numpy type error naming no element.
    dcmimage reads words and takes the data's own length (with a warning); so do we."""
    rng = np.random.default_rng(words + bits_per_entry)
    ds = data.dataset(
        rng.integers(0, min(words, descriptor[0] or 65536), (20, 24)).astype(np.uint16),
        photometric="PALETTE COLOR",
        modality="OT",
        sop_class=SC,
    )
    top = 1 << bits_per_entry
    data.set_palette(ds, descriptor, lambda i: rng.integers(0, top, words).astype("<u2").tobytes())
    path = data.write(ds, tmp_path / "palette.dcm")
    for bits in (8, 16):
        ref = dcmtk_render(path, [], tmp_path, bits=bits)
        assert ref is not None
        assert np.array_equal(ours(path, display.VoiChoice(), bits=bits), ref), bits


def test_palette_colours_of_different_lengths_are_refused_by_element(tmp_path: Path) -> None:
    ds = data.dataset(
        np.zeros((4, 4), np.uint16), photometric="PALETTE COLOR", modality="OT", sop_class=SC
    )
    data.set_palette(ds, [256, 0, 16], lambda i: bytes(400 if i == 2 else 512))
    path = data.write(ds, tmp_path / "palette.dcm")
    with pytest.raises(BadPixelData, match=r"\(0028,1201..1203\) Red/Green/Blue .* differ"):
        ours(path, display.VoiChoice())


@pytest.mark.parametrize("args", [["dcmcjpeg", "+eb"], ["dcmcrle"], ["dcmcjpeg", "+e1"]])
def test_more_frames_in_the_data_than_number_of_frames_renders_the_first(
    tmp_path: Path, args: list[str]
) -> None:
    """Encapsulated Pixel Data holding more frames than (0028,0008) Number of Frames (absent:
    1): pydicom warns and returns them all; a colour object then failed with "cannot write
    PNG from a uint8 array of shape (2, 30, 40, 3)", naming neither file nor element.
    dcmj2pnm renders the first frame; so do we (the pydicom warning is logged)."""
    colour = data.us_multiframe(tmp_path / "us.dcm", frames=2)
    packed = _dcmtk_convert(args, colour, tmp_path / "packed.dcm")
    ds = pydicom.dcmread(packed)
    del ds.NumberOfFrames
    path = data.write(ds, tmp_path / "one.dcm")
    ref = dcmtk_render(path, [], tmp_path)
    assert ref is not None
    assert_close(ours(path, display.VoiChoice()), ref, " ".join(args))


@pytest.mark.parametrize(
    "args",
    [["dcmcjpeg", "+eb"], ["dcmcjpeg", "+eb", "+cr"], ["dcmcjpeg", "+e1"], ["dcmcjpls", "+in"]],
)
def test_planar_configuration_1_on_compressed_colour_is_ignored_like_dcmtk(
    tmp_path: Path, args: list[str]
) -> None:
    """(0028,0006) Planar Configuration 1 on JPEG data (PS3.5 8.2.1: irrelevant there, it
    "shall be 0"; some ultrasound devices write 1): pydicom applied it to the interleaved
    samples the JPEG decoders return and the colours came out scrambled (mean error ~40 on
    a smooth image). dcmimage ignores it for compressed data; so do we."""
    ds = pydicom.dcmread(_dcmtk_convert(args, _smooth_rgb(tmp_path), tmp_path / "packed.dcm"))
    ds.PlanarConfiguration = 1
    path = data.write(ds, tmp_path / "planar1.dcm")
    ref = dcmtk_render(path, [], tmp_path, frame=1)
    assert ref is not None
    assert_close(ours(path, display.VoiChoice(), 1), ref, " ".join(args))


def _smooth_rgb(tmp: Path) -> Path:
    """Two frames of smooth colour gradients (lossy JPEG keeps them within a few levels)."""
    yy, xx = np.mgrid[0:31, 0:42]
    rgb = np.stack([(xx * 6) % 256, (yy * 8) % 256, ((xx + yy) * 3) % 256], -1).astype(np.uint8)
    pixels = np.stack([rgb, rgb[::-1]])
    ds = data.dataset(
        pixels, photometric="RGB", modality="US", sop_class="1.2.840.10008.5.1.4.1.1.3.1"
    )
    return data.write(ds, tmp / "smooth.dcm")
