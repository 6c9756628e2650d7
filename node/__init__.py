"""support-node: a DICOM node beside the PACS that keeps every image encrypted and AI-ready."""

__version__ = "0.1.0"
