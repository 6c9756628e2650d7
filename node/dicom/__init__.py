"""DICOM helpers that work on bytes: structural checks and header parsing (no pixel decode)."""
