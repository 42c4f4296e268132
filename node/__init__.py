"""dicom-node: a DICOM network node.

Three flows in one process: drop-folder ingestion (image -> DICOM), durable PACS push
(C-STORE SCU), and a C-STORE SCP that archives what modalities send and exports PNG/PDF.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
