"""The benches' DICOM corpus: CT slices and JPEG Secondary Capture objects, made here.

- :func:`ct_series`: 512×512 16-bit (12 stored) CT, Rescale Intercept -1024, window 40/400,
  a water disk with a bone ring and moving lung-like holes plus noise (renders like a CT);
- :func:`jpeg_sc`: Secondary Capture with an encapsulated baseline JPEG (Pillow, 4:2:2),
  each object's pixels different;
- :func:`camera_sc`: the issue's camera corpus (:mod:`camera`, 1280×960, 150–300 KB,
  4:2:0) wrapped as Secondary Capture objects with pydicom, each JPEG's bytes as they are
  (no converter of ours in the peers' input).

Both are reused when already present (same count) so repeated runs skip generation.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

SIZE = 512


def ct_series(directory: Path, count: int = 200) -> list[Path]:
    """``count`` CT slices: a water disk with bone ring and lung-like holes, plus noise."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    directory.mkdir(parents=True, exist_ok=True)
    existing = sorted(directory.glob("ct*.dcm"))
    if len(existing) == count:
        return existing
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    r = np.hypot(x - SIZE / 2, y - SIZE / 2)
    base = np.where(r < 230, 1024 + 40, 24)  # water-ish disk in air (stored = HU + 1024)
    base = np.where((r > 210) & (r < 228), 1024 + 900, base)  # bone ring
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(7)
    paths = []
    for i in range(count):
        holes = np.hypot(x - SIZE / 2 - 80 * np.sin(i / 20), y - SIZE / 2) < 60
        pix = np.where(holes, 1024 - 800, base) + rng.normal(0, 12, (SIZE, SIZE))
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID, ds.Modality = "BENCH^CT", "BENCH1", "CT"
        ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20240101", 1, i + 1
        ds.Rows = ds.Columns = SIZE
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = np.clip(pix, 0, 4095).astype("<u2").tobytes()
        path = directory / f"ct{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _meta_ds(sop_class: str, ts: str, i: int) -> Any:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ts
    ds.SOPClassUID = sop_class
    ds.PatientName = "Bench^Send"
    ds.PatientID = "BENCH"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1234.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1234.1." + ("1" if "7" in sop_class else "2")
    ds.InstanceNumber = i + 1
    return ds


def _jpeg_sc(i: int, jpeg: bytes, shape: tuple[int, int], modality: str, conversion: str) -> Any:
    """Object ``i``: Secondary Capture holding ``jpeg`` (baseline, YCbCr) as its one fragment;
    ``shape`` = (rows, columns)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage

    ds = _meta_ds(SecondaryCaptureImageStorage, JPEGBaseline8Bit, i)
    ds.Modality = modality
    ds.ConversionType = conversion
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    return ds


def jpeg_sc(out: Path, count: int = 200, size: tuple[int, int] = (512, 384)) -> list[Path]:
    """SC objects with encapsulated baseline JPEG (Pillow, 4:2:2), ``size`` = (width, height)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob("sc*.dcm"))
    if len(existing) == count:
        return existing
    width, height = size
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1).astype(np.int16)
    paths = []
    for i in range(count):
        arr = (base + rng.integers(-12, 12, base.shape)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=85, subsampling=1)
        ds = _jpeg_sc(i, buf.getvalue(), (height, width), "OT", "WSD")
        path = out / f"sc{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def camera_sc(out: Path, count: int = 240) -> list[Path]:
    """SC objects holding the camera-like JPEGs of :mod:`camera`, byte for byte."""
    from camera import camera_jpegs

    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob("cam*.dcm"))
    if len(existing) == count:
        return existing
    paths = []
    for i, jpeg in enumerate(camera_jpegs(out.parent / f"{out.name}-jpegs", count)):
        ds = _jpeg_sc(i, jpeg.read_bytes(), (960, 1280), "XC", "DI")
        path = out / f"cam{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
