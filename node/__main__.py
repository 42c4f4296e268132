"""``python -m node``: the same entry point as the ``dicom-node`` console script."""

import sys

from node.cli import main

sys.exit(main())
