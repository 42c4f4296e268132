"""Ingest: images (JPEG, PNG, BMP, TIFF) into DICOM, and the drop folder that feeds it.

``convert`` is the library entry point (``convert_file``, ``ConvertOptions``,
``SeriesContext``); ``commands`` adds ``dicom-node convert``; ``jpeg``, ``exif``,
``images``, ``metadata``, ``modules``, ``iods``, ``elements``, ``encoder`` and
``batchwrite`` are its parts (see docs/convert.md). The watcher and the pipeline turn a
drop folder into queued deliveries.
"""
