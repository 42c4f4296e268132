"""Small generated DICOM objects for the export tests (CT, MR, CR, US, palette, YBR, PDF)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

PATIENT = {
    "PatientName": "SECRETPERSON^JANE",
    "PatientID": "PIDSECRET123",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACCSECRET9",
    "InstitutionName": "SECRETHOSPITAL",
}
STUDY_UID = "1.2.826.0.1.3680043.10.543.1"
SC = "1.2.840.10008.5.1.4.1.1.7"


def dataset(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    modality: str = "CT",
    sop_class: str = "1.2.840.10008.5.1.4.1.1.2",
    bits_stored: int | None = None,
    series_uid: str = STUDY_UID + ".2",
    instance: int = 1,
    **extra: Any,
) -> Dataset:
    """A complete little image object around ``pixels`` (frames first if 3-D gray/4-D RGB)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.StudyDescription = "HEAD ROUTINE"
    ds.SeriesDescription = "AXIAL 5MM"
    ds.SeriesNumber = 3
    ds.InstanceNumber = instance
    ds.Modality = modality
    colour = photometric not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")
    frames = pixels.shape[0] if pixels.ndim == (4 if colour else 3) else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def ct_pixels(rows: int = 64, cols: int = 64, seed: int = 1) -> np.ndarray:
    """Stored CT values (rescale -1024) spanning air to bone, with fine detail near 40 HU."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    ramp = (x * 3000 // max(cols - 1, 1)).astype(np.int32)
    fine = 1024 + (y * 7 + x * 5) % 420 - 170  # -170..250 HU around the 40/400 window
    pix = np.where(y < rows // 2, ramp, fine) + rng.integers(0, 3, (rows, cols))
    return np.clip(pix, 0, 4095).astype(np.uint16)


def ct(path: Path, **kw: Any) -> Path:
    extra = {
        "RescaleIntercept": -1024,
        "RescaleSlope": 1,
        "RescaleType": "HU",
        "WindowCenter": [40, 400],
        "WindowWidth": [400, 2000],
    }
    extra.update(kw)
    return write(dataset(ct_pixels(), bits_stored=12, **extra), path)


def mr(path: Path) -> Path:
    rng = np.random.default_rng(2)
    pix = rng.integers(-300, 2500, (48, 40)).astype(np.int16)
    return write(
        dataset(
            pix,
            modality="MR",
            sop_class="1.2.840.10008.5.1.4.1.1.4",
            WindowCenter=700,
            WindowWidth=1500,
        ),
        path,
    )


def cr(path: Path, photometric: str = "MONOCHROME1", **extra: Any) -> Path:
    y, x = np.mgrid[0:50, 0:60]
    pix = ((x * 60 + y * 20) % 1024).astype(np.uint16)
    return write(
        dataset(
            pix,
            photometric=photometric,
            modality="CR",
            sop_class="1.2.840.10008.5.1.4.1.1.1",
            bits_stored=10,
            WindowCenter=512,
            WindowWidth=700,
            **extra,
        ),
        path,
    )


def us_multiframe(path: Path, frames: int = 3) -> Path:
    rng = np.random.default_rng(3)
    pix = rng.integers(0, 256, (frames, 30, 40, 3)).astype(np.uint8)
    return write(
        dataset(pix, photometric="RGB", modality="US", sop_class="1.2.840.10008.5.1.4.1.1.3.1"),
        path,
    )


def voi_lut(path: Path) -> Path:
    """CT with a VOI LUT Sequence (12-bit LUT, gamma-like) and no window."""
    item = Dataset()
    item.add_new(0x00283002, "US", [2048, 0, 12])  # LUTDescriptor
    item.LUTExplanation = "GAMMA"
    item.add_new(0x00283006, "US", [int(4095 * (i / 2047) ** 0.6) for i in range(2048)])
    return write(
        dataset(
            ct_pixels(seed=4),
            bits_stored=12,
            VOILUTSequence=Sequence([item]),
        ),
        path,
    )


def ybr_full(path: Path) -> Path:
    rng = np.random.default_rng(5)
    pix = rng.integers(0, 256, (20, 24, 3)).astype(np.uint8)
    return write(
        dataset(pix, photometric="YBR_FULL", modality="OT", sop_class="1.2.840.10008.5.1.4.1.1.7"),
        path,
    )


def encapsulated_pdf(path: Path, pdf: bytes) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.SOPInstanceUID = uid
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = STUDY_UID + ".9"
    ds.Modality = "DOC"
    ds.InstanceNumber = 1
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")
    return write(ds, path)


def segmented_palette(path: Path) -> Path:
    """PALETTE COLOR with segmented LUTs (PS3.3 C.7.9.2): linear ramps, one reversed."""
    y, x = np.mgrid[0:32, 0:40]
    ds = dataset(
        ((x * 6 + y) % 256).astype(np.uint8),
        photometric="PALETTE COLOR",
        modality="OT",
        sop_class="1.2.840.10008.5.1.4.1.1.7",
    )
    up = [0, 1, 0, 1, 255, 65535]  # discrete 0, then linear to 65535 over 255 entries
    down = [0, 1, 65535, 1, 255, 0]
    half = [0, 1, 0, 1, 127, 65535, 1, 128, 0]  # up then down
    for colour, segments in (("Red", up), ("Green", down), ("Blue", half)):
        ds.add_new(pydicom_tag(f"{colour}PaletteColorLookupTableDescriptor"), "US", [256, 0, 16])
        ds.add_new(
            pydicom_tag(f"Segmented{colour}PaletteColorLookupTableData"),
            "OW",
            np.asarray(segments, dtype="<u2").tobytes(),
        )
    return write(ds, path)


def pydicom_tag(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return int(tag)


def set_palette(ds: Dataset, descriptor: list[int], table: Callable[[int], bytes]) -> None:
    """The Red, Green and Blue Palette Color Lookup Table Descriptor (US) and Data (OW):
    ``table(i)`` gives channel i's (0 red, 1 green, 2 blue) data bytes."""
    for i, colour in enumerate(("Red", "Green", "Blue")):
        ds.add_new(pydicom_tag(f"{colour}PaletteColorLookupTableDescriptor"), "US", descriptor)
        ds.add_new(pydicom_tag(f"{colour}PaletteColorLookupTableData"), "OW", table(i))


def modality_lut(path: Path) -> Path:
    """12-bit data through a Modality LUT Sequence (non-linear) with a window on its output."""
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])  # LUTDescriptor
    item.ModalityLUTType = "US"
    item.add_new(0x00283006, "US", [int(65535 * (i / 4095) ** 2) for i in range(4096)])
    return write(
        dataset(
            ct_pixels(seed=6),
            bits_stored=12,
            modality="OT",
            ModalityLUTSequence=Sequence([item]),
            WindowCenter=20000,
            WindowWidth=30000,
        ),
        path,
    )


def pet_like(path: Path) -> Path:
    """Signed 16-bit with a fractional rescale slope (PT-style)."""
    rng = np.random.default_rng(8)
    pix = rng.integers(-2000, 30000, (40, 36)).astype(np.int16)
    return write(
        dataset(
            pix,
            modality="PT",
            sop_class="1.2.840.10008.5.1.4.1.1.128",
            RescaleSlope="0.37",
            RescaleIntercept="-12.5",
            WindowCenter=3000,
            WindowWidth=6001,
        ),
        path,
    )


def us_gray_multiframe(path: Path, frames: int = 3) -> Path:
    rng = np.random.default_rng(9)
    pix = rng.integers(0, 256, (frames, 24, 28)).astype(np.uint8)
    return write(dataset(pix, modality="US", sop_class="1.2.840.10008.5.1.4.1.1.3.1"), path)


def high_bits(path: Path) -> Path:
    """Signed 12-bit data in 16-bit words with junk above High Bit (must be masked)."""
    rng = np.random.default_rng(10)
    words = rng.integers(-2048, 2048, (32, 40)).astype(np.int16).view(np.uint16) & 0x0FFF
    words[::3] |= 0x4000
    words[1::5] |= 0x9000
    return write(
        dataset(words.view(np.int16), bits_stored=12, WindowCenter=0, WindowWidth=1000), path
    )


def modality_lut_8bit(path: Path) -> Path:
    """Modality LUT Sequence with 8-bit entries whose first mapped value is 100: stored values
    below 100 map to the first entry (PS3.3 C.11.1.1), those above the last to the last."""
    item = Dataset()
    item.add_new(0x00283002, "US", [256, 100, 8])  # LUTDescriptor
    item.ModalityLUTType = "OD"
    item.add_new(0x00283006, "US", [int(255 * (i / 255) ** 0.5) for i in range(256)])
    rng = np.random.default_rng(11)
    return write(
        dataset(
            rng.integers(0, 400, (25, 27)).astype(np.uint16),
            bits_stored=12,
            modality="OT",
            ModalityLUTSequence=Sequence([item]),
        ),
        path,
    )


def voi_lut_inverse(path: Path, photometric: str = "MONOCHROME2", **extra: Any) -> Path:
    """A 12-bit VOI LUT with Presentation LUT Shape INVERSE (or on MONOCHROME1)."""
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 12])  # LUTDescriptor
    item.add_new(0x00283006, "US", [int(4095 * (i / 4095) ** 0.5) for i in range(4096)])
    return write(
        dataset(
            ct_pixels(seed=12),
            photometric=photometric,
            bits_stored=12,
            VOILUTSequence=Sequence([item]),
            **extra,
        ),
        path,
    )


def voi_lut_signed_input(path: Path) -> Path:
    """CT (rescale -1024) whose VOI LUT starts at -1024 HU, the descriptor written as US
    (64512), as implicit-VR files and many writers have it. Stored values stay >= 1100, so
    only the range Bits Stored allows, not the data, makes the LUT input signed."""
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 65536 - 1024, 12])  # LUTDescriptor
    item.add_new(0x00283006, "US", list(range(4096)))
    rng = np.random.default_rng(13)
    return write(
        dataset(
            rng.integers(1100, 3000, (40, 40)).astype(np.uint16),
            bits_stored=12,
            RescaleIntercept=-1024,
            RescaleSlope=1,
            VOILUTSequence=Sequence([item]),
        ),
        path,
    )


def _item(**values: Any) -> Dataset:
    item = Dataset()
    for key, value in values.items():
        setattr(item, key, value)
    return item


#: Per-frame (intercept, centre, width) of :func:`enhanced_ct`.
ENHANCED_FRAMES = ((-1024, 40, 400), (-924, 400, 2000), (-824, 42, 400))


def enhanced_ct(path: Path, shared_rescale: bool = False) -> Path:
    """Enhanced CT (3 frames) whose rescale and windows are only in functional groups:
    per frame (:data:`ENHANCED_FRAMES`), or the rescale shared (-1024) and windows per frame."""
    pixels = np.stack([ct_pixels(seed=20 + f) for f in range(len(ENHANCED_FRAMES))])
    ds = dataset(pixels, bits_stored=12, sop_class="1.2.840.10008.5.1.4.1.1.2.1")
    shared = Dataset()
    if shared_rescale:
        shared.PixelValueTransformationSequence = Sequence(
            [_item(RescaleIntercept=-1024, RescaleSlope=1, RescaleType="HU")]
        )
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for intercept, center, width in ENHANCED_FRAMES:
        group = Dataset()
        if not shared_rescale:
            group.PixelValueTransformationSequence = Sequence(
                [_item(RescaleIntercept=intercept, RescaleSlope=1, RescaleType="HU")]
            )
        group.FrameVOILUTSequence = Sequence([_item(WindowCenter=center, WindowWidth=width)])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    return write(ds, path)


def classic_twin(enhanced: Path, frame: int, path: Path) -> Path:
    """Frame ``frame`` of an :func:`enhanced_ct` as a classic CT with its rescale and window
    at the top level (what a DCMTK without functional group support renders correctly)."""
    from pydicom import dcmread

    src = dcmread(enhanced)
    groups = [src.SharedFunctionalGroupsSequence[0], src.PerFrameFunctionalGroupsSequence[frame]]
    extra: dict[str, Any] = {}
    for group in groups:
        for macro in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            if macro in group:
                extra.update({e.keyword: e.value for e in group[macro][0]})
    return write(dataset(src.pixel_array[frame], bits_stored=12, **extra), path)


def ow_luts(directory: Path) -> dict[str, Path]:
    """Objects whose LUT Data is OW (byte order follows the transfer syntax): a 16-bit VOI
    LUT, a 16-bit Modality LUT with a window on HU-like output, 16-bit and packed 8-bit
    palettes, and a segmented palette."""
    rng = np.random.default_rng(14)
    out: dict[str, Path] = {}
    voi = Dataset()
    voi.add_new(0x00283002, "US", [4096, 0, 16])
    voi.add_new(
        0x00283006, "OW", np.asarray([(i * 37) % 65536 for i in range(4096)], "<u2").tobytes()
    )
    ds = dataset(ct_pixels(seed=15), bits_stored=12, VOILUTSequence=Sequence([voi]))
    out["voi_lut_ow"] = write(ds, directory / "voi-ow.dcm")
    mod = Dataset()
    mod.add_new(0x00283002, "US", [4096, 0, 16])
    mod.ModalityLUTType = "OD"
    mod.add_new(0x00283006, "OW", np.asarray([i * 11 for i in range(4096)], "<u2").tobytes())
    ds = dataset(
        ct_pixels(seed=16),
        bits_stored=12,
        modality="OT",
        ModalityLUTSequence=Sequence([mod]),
        WindowCenter=20000,
        WindowWidth=30000,
    )
    out["modality_lut_ow"] = write(ds, directory / "mod-ow.dcm")
    index = rng.integers(0, 256, (18, 22)).astype(np.uint8)
    for name, bits, dtype in (("palette16", 16, "<u2"), ("palette8_packed", 8, "u1")):
        ds = dataset(index, photometric="PALETTE COLOR", modality="OT", sop_class=SC)
        set_palette(
            ds,
            [256, 0, bits],
            lambda i, bits=bits, dtype=dtype: np.asarray(
                (np.arange(256) * (i + 3) * 97) % (1 << bits), dtype
            ).tobytes(),
        )
        out[name] = write(ds, directory / f"{name}.dcm")
    out["segmented_palette"] = segmented_palette(directory / "segmented.dcm")
    return out
