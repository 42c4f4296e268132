"""PDF writer (reportlab): one image per page at native resolution, or a contact sheet.

Why reportlab: it is installed already, well kept, writes images losslessly (Flate,
DeviceGray or DeviceRGB, the decoded 8-bit samples unchanged) and real text (Helvetica,
and fonts for other scripts, :mod:`node.export.pdftext`, so captions are searchable and
``pdftotext`` finds them), and lets us set every metadata
field ourselves, which is what keeps patient identifiers out of the document info.

``page`` layout: each page is sized to its image at 1 pixel = 1 point (72 dpi) plus a header
band (study line) and a caption band, so a viewer or ``pdftoppm -r 72`` shows the pixels
exactly; an image wider or taller than :data:`MAX_SIDE` points is drawn scaled (the
embedded samples stay native). Pixels that are not square (:mod:`node.export.aspect`) are
drawn with their physical proportions: the image is stretched along its shorter pixel
side, in both layouts. ``contact`` layout: A4 landscape sheets of a 4 x 3 grid,
each cell with its caption. Output is deterministic (reportlab ``invariant`` mode).

The header's count line (``tally``) is known only once every image has been rendered or
refused: each page draws it as a form XObject whose content is written by
:meth:`Sheet.finish` (a PDF may define an XObject after the pages that use it).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from reportlab import rl_config
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen import canvas

from node import __version__
from node.export import pdftext

log = logging.getLogger(__name__)

MAX_SIDE = 14000.0  # PDF user space limit is 14400 points
MARGIN = 18.0
HEADER = 44.0
CAPTION = 30.0
MIN_WIDTH = 420.0
GRID = (4, 3)


_TALLY_FORM = "tally"


def _shown(image: Image.Image, aspect: float) -> tuple[float, float]:
    """Width and height in points at one point per pixel along the pixel's longer side:
    a pixel twice as tall as wide makes the image twice as tall, not half as wide."""
    w, h = float(image.width), float(image.height)
    return (w, h * aspect) if aspect >= 1.0 else (w / aspect, h)


@dataclass
class Sheet:
    """A PDF being built: header lines shown on every page, then images with captions.

    ``tally``: the index in ``header`` of the line :meth:`finish` writes (its text in
    ``header`` is the expected one, used to size the pages); None: every line is fixed.
    """

    title: str
    header: list[str]
    layout: str = "page"
    subject: str = ""
    keywords: str = ""
    tally: int | None = None
    _buf: io.BytesIO = field(default_factory=io.BytesIO)
    _canvas: canvas.Canvas | None = None
    _cells: int = 0
    _narrowest: float = MAX_SIDE  # the least room for a header line on any page
    pages: int = 0

    def _new_canvas(self) -> canvas.Canvas:
        # Binary Flate streams, not ASCII85 on top: reportlab's pure-Python ASCII85 took 80 %
        # of the time of a CT series PDF and made it 25 % larger (a process-wide setting).
        rl_config.useA85 = 0
        c = canvas.Canvas(self._buf, invariant=1, pageCompression=1)
        c.setTitle(self.title)
        c.setSubject(self.subject)
        c.setKeywords(self.keywords)
        c.setAuthor("")
        c.setCreator(f"dicom-node {__version__}")
        return c

    def _header(self, c: canvas.Canvas, width: float, height: float) -> None:
        room = width - 2 * MARGIN  # a page layout page is made wide enough for its lines
        self._narrowest = min(self._narrowest, room)
        first = pdftext.fit(self.header[0] if self.header else "", 11, room, True)
        pdftext.draw(c, MARGIN, height - MARGIN - 10, first, 11, True)
        for i, line in enumerate(self.header[1:4], 1):
            y = height - MARGIN - 22 - 9 * (i - 1)
            if i == self.tally:
                c.saveState()
                c.translate(MARGIN, y)
                c.doForm(_TALLY_FORM)  # written by finish()
                c.restoreState()
            else:
                pdftext.draw(c, MARGIN, y, pdftext.fit(line, 8, room), 8)

    def _text_width(self, caption: list[str]) -> float:
        """The widest header or caption line of a page layout page, in points."""
        first = [pdftext.width(self.header[0], 11, True)] if self.header else []
        lines = [pdftext.width(line, 8) for line in self.header[1:4] + caption[:3]]
        return max(first + lines, default=0.0)

    def add(self, pixels: np.ndarray, caption: list[str], aspect: float = 1.0) -> None:
        """Add one rendered frame (uint8 gray or RGB; uint16 is reduced to its top 8 bits);
        ``aspect``: how many times taller than wide one pixel is shown."""
        if pixels.dtype != np.uint8:
            pixels = (pixels >> 8).astype(np.uint8)
        image = Image.fromarray(np.ascontiguousarray(pixels))  # L or RGB
        if self._canvas is None:
            self._canvas = self._new_canvas()
        if self.layout == "contact":
            self._add_cell(self._canvas, image, caption, aspect)
        else:
            self._add_page(self._canvas, image, caption, aspect)

    def _add_page(
        self, c: canvas.Canvas, image: Image.Image, caption: list[str], aspect: float
    ) -> None:
        w, h = _shown(image, aspect)
        scale = min(1.0, MAX_SIDE / w, MAX_SIDE / h)
        dw, dh = w * scale, h * scale
        # as wide as the image, or as its header and caption lines (a narrow image with long
        # identifiers or descriptions would cut them off at the page edge)
        page_w = max(dw, MIN_WIDTH, min(self._text_width(caption), MAX_SIDE)) + 2 * MARGIN
        page_h = dh + HEADER + CAPTION + 2 * MARGIN
        c.setPageSize((page_w, page_h))
        self._header(c, page_w, page_h)
        x = MARGIN
        y = MARGIN + CAPTION
        c.drawImage(ImageReader(image), x, y, width=dw, height=dh)
        for i, line in enumerate(caption[:3]):
            pdftext.draw(c, MARGIN, MARGIN + CAPTION - 10 - 9 * i, line, 8)
        c.showPage()
        self.pages += 1

    def _add_cell(
        self, c: canvas.Canvas, image: Image.Image, caption: list[str], aspect: float
    ) -> None:
        page_w, page_h = landscape(A4)
        cols, rows = GRID
        per_page = cols * rows
        slot = self._cells % per_page
        if slot == 0:
            if self._cells:
                c.showPage()
            c.setPageSize((page_w, page_h))
            self._header(c, page_w, page_h)
            self.pages += 1
        cell_w = (page_w - 2 * MARGIN) / cols
        cell_h = (page_h - 2 * MARGIN - HEADER) / rows
        col, row = slot % cols, slot // cols
        box_w, box_h = cell_w - 8, cell_h - 8 - 20
        w, h = _shown(image, aspect)
        scale = min(box_w / w, box_h / h)
        dw, dh = w * scale, h * scale
        x0 = MARGIN + col * cell_w + 4
        y0 = page_h - MARGIN - HEADER - (row + 1) * cell_h + 4
        c.drawImage(ImageReader(image), x0 + (box_w - dw) / 2, y0 + 20 + (box_h - dh) / 2, dw, dh)
        for i, line in enumerate(caption[:2]):
            pdftext.draw(c, x0, y0 + 11 - 8 * i, pdftext.fit(line, 6.5, cell_w - 4), 6.5)
        self._cells += 1

    def finish(self, tally: str = "") -> bytes | None:
        """The PDF bytes, or None if nothing was added; ``tally``: the text of the header's
        count line (see ``Sheet.tally``), cut to fit the narrowest page."""
        if self._canvas is None:
            return None
        c = self._canvas
        if self.layout == "contact":
            c.showPage()
        if self.tally is not None:
            c.beginForm(_TALLY_FORM)
            pdftext.draw(c, 0, 0, pdftext.fit(tally, 8, self._narrowest), 8)
            c.endForm()
        c.save()
        return self._buf.getvalue()
