"""Keys and the encrypted object format: `keyring` (numbered keys, pseudonyms), `keyfile` (the
key file on disk: read, locked, written atomically), `aead` (chunked AES-GCM objects)."""

from node.crypto.aead import (
    DEFAULT_CHUNK_SIZE,
    DecryptingReader,
    Encryptor,
    decrypt,
    encrypt,
)
from node.crypto.keyring import Key, KeyInfo, Keyring

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DecryptingReader",
    "Encryptor",
    "Key",
    "KeyInfo",
    "Keyring",
    "decrypt",
    "encrypt",
]
