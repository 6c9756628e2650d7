"""The object store: `encrypted_fs` (an fsspec filesystem that encrypts every object) over a
backend from `backends` (local disk, memory, S3)."""

import fsspec

# By dotted name, so registering imports nothing until first use:
# fsspec.filesystem("encrypted", fs=..., keyring=..., root=...)
fsspec.register_implementation(
    "encrypted", "node.store.encrypted_fs.EncryptedFileSystem", clobber=True
)
