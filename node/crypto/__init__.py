"""Keys and the encrypted object format: `keyring` (numbered keys, pseudonyms), `keyfile` (the
key file on disk: read, locked, written atomically), `aead` (chunked AES-GCM objects), `reader`
(their streaming, seekable reads)."""

from node.crypto.aead import (
    DEFAULT_CHUNK_SIZE,
    Encryptor,
    decrypt,
    encrypt,
)
from node.crypto.keyring import Key, KeyInfo, Keyring
from node.crypto.reader import DecryptingReader

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
