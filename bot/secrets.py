"""Secrets at rest: Fernet encryption under a key derived from THREADWORK_SECRET_KEY."""

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bot.errors import ConfigurationError

_CONTEXT = b"threadwork agent secrets v1"


class SecretBox:
    """Encrypts and decrypts agent secrets. Its repr never shows the key."""

    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            raise ConfigurationError(
                "THREADWORK_SECRET_KEY is not set; it is needed to store keys."
            )
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_CONTEXT).derive(
            secret_key.encode()
        )
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def __repr__(self) -> str:
        return "SecretBox(<redacted>)"

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, ciphertext: bytes) -> str:
        """Returns the plaintext; a wrong THREADWORK_SECRET_KEY is reported as such."""
        try:
            return self._fernet.decrypt(ciphertext).decode()
        except InvalidToken:
            raise ConfigurationError(
                "a stored secret cannot be decrypted: THREADWORK_SECRET_KEY differs from the "
                "key it was stored with"
            ) from None
