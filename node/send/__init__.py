"""Delivery to PACS: DIMSE status classification, presentation contexts, the C-STORE SCU."""
