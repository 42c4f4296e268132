"""Camera-like JPEGs for the benches: 150–300 KB, 4:2:0, with EXIF, all different."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def camera_jpeg(seed: int, size: tuple[int, int] = (1280, 960)) -> Image.Image:
    """Smooth gradients plus sensor-like noise: compresses like a photograph."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [
            128 + 90 * np.sin(x / (60 + seed % 40) + seed),
            128 + 90 * np.cos(y / (50 + seed % 30)),
            128 + 60 * np.sin((x + y) / (80 + seed % 20)),
        ],
        axis=-1,
    )
    noise = rng.normal(0, 7, (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def camera_jpegs(folder: Path, count: int) -> list[Path]:
    """``count`` distinct camera-like JPEGs in ``folder`` (reused if already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"IMG_{i:04d}.jpg"
        if not path.exists():
            image = camera_jpeg(i)
            exif = Image.Exif()
            exif[0x010F] = "BenchCam"  # Make
            exif[0x0110] = "Model 1"  # Model
            exif[0x8769] = {0x9003: f"2026:01:{1 + i % 28:02d} 10:{i % 60:02d}:00"}
            image.save(path, "JPEG", quality=85, subsampling=2, exif=exif)
        paths.append(path)
    return paths


if __name__ == "__main__":
    import sys
    import tempfile

    out = camera_jpegs(Path(tempfile.mkdtemp()), 5)
    sizes = [p.stat().st_size for p in out]
    print(out[0].parent, sizes)
    sys.exit(0 if all(150_000 <= s <= 300_000 for s in sizes) else 1)
