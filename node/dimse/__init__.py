"""The DIMSE side: pynetdicom AE, its handlers, and the status codes they send."""
