"""``python -m node``: the same entry point as the ``dicom-node`` console script."""

from node.cli import console

console()
