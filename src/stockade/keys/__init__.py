"""The key store: signing keys and named secrets behind one interface.

The local backend keeps an encrypted keyring under the data folder. Vault transit and
cloud KMS backends implement the same ``KeyStore`` protocol.
"""

from stockade.keys.local import LocalKeyStore
from stockade.keys.store import KeyStore, Secret, SigningKey, WrappedKey

__all__ = ["KeyStore", "LocalKeyStore", "Secret", "SigningKey", "WrappedKey"]
