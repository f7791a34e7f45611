"""Secrets at rest: Fernet encryption under keys derived from THREADWORK_SECRET_KEY.

THREADWORK_SECRET_KEY is at least 32 random bytes, written in URL-safe base64. The Fernet key is
derived from those bytes with HKDF-SHA256, salt :data:`SALT` and info :data:`INFO` (both fixed:
changing either makes every stored secret unreadable). Rotation: the values in
THREADWORK_SECRET_KEY_PREVIOUS still decrypt (a MultiFernet), and :meth:`SecretBox.rotate`
re-encrypts a row under the current key. Rows written before this derivation (HKDF without a
salt over the key's text, info :data:`LEGACY_INFO`) still decrypt too, and rotate the same way.
"""

import base64
import binascii
import re

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bot.errors import ConfigurationError

#: The shortest key accepted, in decoded bytes.
MIN_KEY_BYTES = 32
#: HKDF salt and info of the current derivation.
SALT = b"threadwork/agent-secrets/salt/v2"
INFO = b"threadwork agent secrets: fernet key v2"
#: HKDF info of the first derivation (no salt, the key's text as input), read only.
LEGACY_INFO = b"threadwork agent secrets v1"
_URLSAFE_BASE64 = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")
#: Fewer distinct byte values than this in a key is no random key (32 random bytes have ~30).
_MIN_DISTINCT_BYTES = 16
KEY_HOWTO = (
    'python -c "import secrets, base64; '
    'print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())"'
)


def decode_secret_key(value: str) -> bytes:
    """The key's bytes; raises ValueError (never quoting the value) when it is too weak."""
    text = value.strip()
    if not _URLSAFE_BASE64.match(text):
        raise ValueError(f"must be URL-safe base64 of at least {MIN_KEY_BYTES} random bytes")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("is not valid URL-safe base64") from None
    if len(raw) < MIN_KEY_BYTES or len(set(raw)) < _MIN_DISTINCT_BYTES:
        raise ValueError(
            f"must be at least {MIN_KEY_BYTES} random bytes in URL-safe base64 (generate one "
            f"with {KEY_HOWTO})"
        )
    return raw


def _fernet(material: bytes, salt: bytes | None, info: bytes) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(material)
    return Fernet(base64.urlsafe_b64encode(derived))


def _keys_for(value: str, current: bool) -> tuple[list[Fernet], list[Fernet]]:
    """The (current, legacy) derivations of one configured key. A previous key may be a
    passphrase from before keys had to be strong: it then has only the legacy derivation."""
    try:
        raw = decode_secret_key(value)
    except ValueError as exc:
        if current:
            raise ConfigurationError(f"THREADWORK_SECRET_KEY {exc}") from None
        return [], [_fernet(value.encode(), None, LEGACY_INFO)]
    return [_fernet(raw, SALT, INFO)], [_fernet(value.encode(), None, LEGACY_INFO)]


class SecretBox:
    """Encrypts agent secrets under the current key and decrypts them under any configured
    one. Its repr never shows a key."""

    def __init__(self, secret_key: str, previous: str | None = None) -> None:
        if not secret_key:
            raise ConfigurationError(
                "THREADWORK_SECRET_KEY is not set; it is needed to store keys."
            )
        current, legacy = _keys_for(secret_key, current=True)
        if previous:
            old, old_legacy = _keys_for(previous, current=False)
            current, legacy = current + old, legacy + old_legacy
        self._fernet = MultiFernet(current + legacy)

    def __repr__(self) -> str:
        return "SecretBox(<redacted>)"

    def encrypt(self, plaintext: str) -> bytes:
        """Encrypts under THREADWORK_SECRET_KEY."""
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, ciphertext: bytes) -> str:
        """Returns the plaintext; a row no configured key opens is reported as such."""
        try:
            return self._fernet.decrypt(ciphertext).decode()
        except InvalidToken:
            raise _unreadable() from None

    def can_decrypt(self, ciphertext: bytes) -> bool:
        """Whether a configured key opens ``ciphertext``."""
        try:
            self._fernet.decrypt(ciphertext)
        except InvalidToken:
            return False
        return True

    def rotate(self, ciphertext: bytes) -> bytes:
        """``ciphertext`` re-encrypted under THREADWORK_SECRET_KEY."""
        try:
            return self._fernet.rotate(ciphertext)
        except InvalidToken:
            raise _unreadable() from None


def _unreadable() -> ConfigurationError:
    return ConfigurationError(
        "a stored secret cannot be decrypted: THREADWORK_SECRET_KEY differs from the key it was "
        "stored with (set that one as THREADWORK_SECRET_KEY_PREVIOUS)"
    )
