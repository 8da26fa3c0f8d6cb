"""Password hashing: argon2id through argon2-cffi (its RFC 9106 low-memory profile).

A stored hash made with other parameters still verifies; the caller rehashes it on the next
successful login (`needs_rehash`). Unknown usernames are verified against a dummy hash, so a
login for a user who does not exist takes as long as one with a wrong password.
"""

from __future__ import annotations

import functools
import logging
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

log = logging.getLogger("inventory.auth")

MIN_LENGTH = 8
MAX_LENGTH = 1024

_hasher = PasswordHasher()

# A hash of a random string nobody kept, made with the hasher's parameters: what an unknown
# user's password is checked against. The answer is thrown away; only the time counts.
_DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$P+BAUZAo/m+QiryEZu7fVw"
    "$VB8H8UvGcN25krj5P6dLe1u+zU+Ox5uBvKS0KihFYdc"
)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether `password` matches `password_hash`; with no hash (an unknown user), False after
    the same work as a real check."""
    if password_hash is None:
        _verify(_dummy_hash(), password)
        return False
    return _verify(password_hash, password)


def needs_rehash(password_hash: str) -> bool:
    """Whether the hash was made with other parameters than the ones in use now."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except VerificationError:
        return False
    except InvalidHashError:
        log.warning("a stored password hash is not an argon2 hash; the login is refused")
        return False


@functools.cache
def _dummy_hash() -> str:
    # Only if the parameters in use differ from the literal's: made once per process.
    if not needs_rehash(_DUMMY_HASH):
        return _DUMMY_HASH
    return _hasher.hash(secrets.token_hex(32))
