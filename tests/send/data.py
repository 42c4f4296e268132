"""Small DICOM objects for the send tests: JPEG and native SC, VLP, and pydicom's test files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    VLPhotographicImageStorage,
    generate_uid,
)

TEST_ROOT = "1.2.826.0.1.3680043.10.1234."


def _base(sop_class: str, ts: str, uid: str | None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = uid or generate_uid(TEST_ROOT)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ts
    ds.SOPClassUID = sop_class
    ds.PatientName = "Test^Send"
    ds.PatientID = "SEND001"
    ds.StudyInstanceUID = generate_uid(TEST_ROOT)
    ds.SeriesInstanceUID = generate_uid(TEST_ROOT)
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ConversionType = "WSD"
    return ds


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    """A baseline JPEG (4:2:2) of a colour gradient."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1)
    arr = (arr + rng.integers(0, 8, arr.shape)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=90, subsampling=1)
    return buf.getvalue()


def jpeg_object(
    path: Path,
    *,
    sop_class: str = SecondaryCaptureImageStorage,
    uid: str | None = None,
    lossy_element: bool = False,
    width: int = 64,
    height: int = 48,
    seed: int = 0,
) -> Path:
    """An SC (or VLP) object with encapsulated baseline JPEG pixel data."""
    data = jpeg_bytes(width, height, seed)
    ds = _base(sop_class, JPEGBaseline8Bit, uid)
    ds.Modality = "XC" if sop_class == VLPhotographicImageStorage else "OT"
    ds.Rows, ds.Columns = height, width
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if lossy_element:
        ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([data])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def native_sc(path: Path, *, uid: str | None = None, size: int = 32, bits: int = 8) -> Path:
    """A native monochrome SC object (Explicit VR Little Endian)."""
    ds = _base(SecondaryCaptureImageStorage, ExplicitVRLittleEndian, uid)
    ds.Modality = "OT"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    dtype = np.uint8 if bits <= 8 else np.uint16
    arr = (np.arange(size * size).reshape(size, size) % (2**bits)).astype(dtype)
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OB" if bits <= 8 else "OW"
    ds.save_as(path, enforce_file_format=True)
    return path


def testdata_copy(name: str, path: Path, *, uid: str | None = None) -> Path:
    """One of pydicom's bundled test files, with a fresh SOP Instance UID (bytes of pixels kept)."""
    src = get_testdata_file(name)
    assert src is not None, name
    ds = dcmread(src)
    ds.SOPInstanceUID = uid or generate_uid(TEST_ROOT)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def mixed_set(directory: Path) -> list[Path]:
    """SC JPEG, SC native, VLP JPEG, CT, MR, multi-frame RT Dose (implicit VR), 2-frame RLE RGB."""
    directory.mkdir(parents=True, exist_ok=True)
    return [
        jpeg_object(directory / "sc_jpeg.dcm"),
        native_sc(directory / "sc_native.dcm"),
        jpeg_object(directory / "vlp.dcm", sop_class=VLPhotographicImageStorage, seed=1),
        testdata_copy("CT_small.dcm", directory / "ct.dcm"),
        testdata_copy("MR_small.dcm", directory / "mr.dcm"),
        testdata_copy("rtdose.dcm", directory / "rtdose_multiframe.dcm"),
        testdata_copy("SC_rgb_rle_2frame.dcm", directory / "rle_2frame.dcm"),
    ]


def pixel_bytes(path_or_bytes: Path | bytes) -> bytes:
    """The raw (0x7FE0,0010) value as stored (encapsulated fragments included)."""
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    return bytes(dcmread(src).PixelData)
