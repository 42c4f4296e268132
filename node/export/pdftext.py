"""Text in the export PDFs in any script: each run of characters drawn with a font that has it.

Captions and headers carry DICOM strings decoded from their Specific Character Set (0008,0005):
Latin-1 (ISO_IR 100), but also Greek, Cyrillic, Japanese (ISO 2022 IR 87), Korean, Chinese or
anything UTF-8 (ISO_IR 192) holds. The PDF base fonts (Helvetica) have Latin-1 glyphs only,
so a line is cut into runs and each run is drawn with

* Helvetica (-Bold) for Latin-1 characters: the text of most exports, unchanged;
* an Adobe CJK font for Han, kana and Hangul: reportlab's CID fonts (HeiseiKakuGo-W5 for a
  line with kana, HYGothic-Medium for Hangul, STSong-Light for Han alone), which need no
  font file (viewers supply the glyphs; ``pdftotext`` maps them back to Unicode);
* a TrueType font for other scripts (Greek, Cyrillic, Latin Extended ...): DejaVu Sans if the
  system has it (``fonts-dejavu-core``, which fontconfig and poppler pull in), else
  reportlab's own Bitstream Vera; embedded as a subset, with its Unicode map, so the text
  stays searchable;
* ``?`` for a character no font here has (logged once per run).
"""

from __future__ import annotations

import functools
import logging
import unicodedata
from pathlib import Path

from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas

log = logging.getLogger(__name__)

BASE = "Helvetica"
#: TrueType fonts tried for characters beyond Latin-1 (regular, bold), in order.
TTF_CANDIDATES = (
    (
        Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
        Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),
    ),
)
JAPANESE, KOREAN, CHINESE = "HeiseiKakuGo-W5", "HYGothic-Medium", "STSong-Light"


@functools.lru_cache(maxsize=1)
def _ttf_fonts() -> tuple[tuple[str, str, frozenset[int]], ...]:
    """Registered TrueType fonts: (regular name, bold name, code points they cover)."""
    import reportlab

    bundled = Path(reportlab.__file__).parent / "fonts"
    candidates = (*TTF_CANDIDATES, (bundled / "Vera.ttf", bundled / "VeraBd.ttf"))
    out = []
    for i, (regular, bold) in enumerate(candidates):
        if not regular.is_file():
            continue
        try:
            font = TTFont(f"export-ttf-{i}", str(regular))
            pdfmetrics.registerFont(font)
            bold_name = font.fontName
            if bold.is_file():
                pdfmetrics.registerFont(TTFont(f"export-ttf-{i}-bold", str(bold)))
                bold_name = f"export-ttf-{i}-bold"
        except Exception as exc:  # noqa: BLE001 - a broken font file is only skipped
            log.warning("font %s not usable for PDF text: %s", regular, exc)
            continue
        out.append((font.fontName, bold_name, frozenset(font.face.charToGlyph)))
    return tuple(out)


@functools.lru_cache(maxsize=4)
def _cid(name: str) -> str:
    pdfmetrics.registerFont(UnicodeCIDFont(name))
    return name


def _cjk(ch: str) -> str | None:
    """'kana', 'hangul' or 'han' for CJK characters (and their punctuation), else None."""
    code = ord(ch)
    if 0x3040 <= code <= 0x30FF or 0x31F0 <= code <= 0x31FF or 0xFF66 <= code <= 0xFF9F:
        return "kana"
    if 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F:
        return "hangul"
    if (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0xF900 <= code <= 0xFAFF
        or 0x3000 <= code <= 0x303F
        or 0xFF00 <= code <= 0xFFEF
    ):
        return "han"
    return None


def runs(text: str, bold: bool = False) -> list[tuple[str, str]]:
    """``text`` as (font name, characters) runs; characters no font has become ``?``."""
    text = unicodedata.normalize("NFC", text)
    scripts = {_cjk(ch) for ch in text}
    cjk_font = JAPANESE if "kana" in scripts else KOREAN if "hangul" in scripts else CHINESE
    out: list[tuple[str, str]] = []
    missing = ""
    for ch in text:
        font = None
        if ord(ch) < 256:
            font = BASE + ("-Bold" if bold else "") if ch.isprintable() or ch == " " else None
            ch = ch if font else "?"
            font = font or BASE
        elif _cjk(ch):
            font = _cid(KOREAN if _cjk(ch) == "hangul" else cjk_font)
        else:
            for regular, bold_name, covered in _ttf_fonts():
                if ord(ch) in covered:
                    font = bold_name if bold else regular
                    break
            if font is None:
                missing += ch
                font, ch = BASE, "?"
        if out and out[-1][0] == font:
            out[-1] = (font, out[-1][1] + ch)
        else:
            out.append((font, ch))
    if missing:
        log.warning("PDF text: no font for %r; shown as '?'", missing)
    return out


def draw(c: canvas.Canvas, x: float, y: float, text: str, size: float, bold: bool = False) -> None:
    """Draw ``text`` at (x, y), run by run."""
    for font, chars in runs(text, bold):
        c.setFont(font, size)
        c.drawString(x, y, chars)
        x += pdfmetrics.stringWidth(chars, font, size)


def width(text: str, size: float, bold: bool = False) -> float:
    """The width of ``text`` as :func:`draw` draws it, in points."""
    return sum(pdfmetrics.stringWidth(chars, font, size) for font, chars in runs(text, bold))


def fit(text: str, size: float, room: float, bold: bool = False) -> str:
    """``text``, cut and ended with '...' if it is wider than ``room`` points."""
    if width(text, size, bold) <= room:
        return text
    while text and width(text + "...", size, bold) > room:
        text = text[:-1]
    return text.rstrip() + "..."
