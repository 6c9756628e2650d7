"""The HTTP edge: DICOMweb (STOW-RS, QIDO-RS, WADO-RS) under ``/dicom-web``, ``/healthz`` and
``/metrics``, on FastAPI + uvicorn. It receives the core from ``node.wiring`` and never
imports the DIMSE edge."""
