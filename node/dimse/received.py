"""The instance a C-STORE carried, as one Part-10 byte string, with as few copies as can be.

pynetdicom gathers the data set in a BytesIO; its ``encoded_dataset(include_meta=True)``
copies that out and then joins it behind the file meta (a third copy while the first two
are alive). Here the bytes are written once into a buffer of the final size, straight from
the BytesIO's own memory, and the BytesIO is dropped: a large instance is held about twice
while it is copied and once after.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from pynetdicom.dsutils import encode_file_meta


def part10(event: Any) -> bytes:
    """The received instance with preamble, ``DICM`` and file meta (as pynetdicom makes
    them); the request's data set buffer is released."""
    request = event.request
    stream = request.DataSet
    if not isinstance(stream, BytesIO):
        return bytes(event.encoded_dataset(include_meta=True))
    head = b"\x00" * 128 + b"DICM" + encode_file_meta(event.file_meta)
    with stream.getbuffer() as body:
        out = bytearray(len(head) + len(body))
        with memoryview(out) as view:  # a bytearray's slice assignment would copy first
            view[:len(head)] = head
            view[len(head):] = body
    request.DataSet = None
    stream.close()
    return out  # type: ignore[return-value]  # a bytearray reads as bytes, with no copy
