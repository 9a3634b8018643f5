"""Password hashing (argon2id) and the password rules.

The rules follow NIST SP 800-63B section 5.1.1.2. A password has 12 to 256 characters,
is not a common password, and is none of the user's last 5 passwords. There are no
composition rules.
"""

from __future__ import annotations

import re
from functools import cache

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 12
# argon2 hashes any length, but a cap keeps one request from costing seconds.
MAX_LENGTH = 256
HISTORY_DEPTH = 5

# RFC 9106 section 4, second recommended option (64 MiB, 3 passes, 4 lanes).
_hasher = PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=4, type=Type.ID)
_SUFFIX = re.compile(r"[\d\W_]+$")
# Runs along a keyboard or the alphabet ("qwertyuiopasdf", "abcdefghijklm").
_SEQUENCES = (
    "qwertyuiopasdfghjklzxcvbnm",
    "azertyuiopqsdfghjklmwxcvbn",
    "abcdefghijklmnopqrstuvwxyz",
    "01234567890",
)


class PasswordRejected(ValueError):
    """A new password breaks a rule. The message names the rule, never the password."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


# A hash of a random string: verifying against it when an account does not exist makes
# a failed sign-in cost the same time whether or not the e-mail address is known.
@cache
def dummy_hash() -> str:
    return _hasher.hash("stockade-no-such-account-placeholder")


def check_new_password(password: str, *, email: str, previous_hashes: list[str]) -> None:
    """Raise ``PasswordRejected`` unless ``password`` meets every rule."""
    if len(password) < MIN_LENGTH:
        raise PasswordRejected(f"passwords need at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordRejected(f"passwords may have at most {MAX_LENGTH} characters")
    if "\x00" in password:
        raise PasswordRejected("passwords must not contain the NUL character")
    if is_common(password, email=email):
        raise PasswordRejected("this password is too common or too close to the e-mail address")
    for old in previous_hashes[:HISTORY_DEPTH]:
        if verify_password(old, password):
            raise PasswordRejected(
                f"this password equals one of the last {HISTORY_DEPTH}; choose another"
            )


def is_common(password: str, *, email: str = "") -> bool:
    """Tell whether a password is on the blocklist, alone or with a suffix of digits."""
    lowered = password.lower()
    candidates = {lowered, _SUFFIX.sub("", lowered)}
    # A password made of one short word repeated ("abcabcabcabc") is as weak as the word.
    for size in range(1, 7):
        if len(lowered) % size == 0 and lowered == lowered[:size] * (len(lowered) // size):
            return True
    stem = _SUFFIX.sub("", lowered)
    if len(stem) >= 6 and any(stem in run or stem in run[::-1] for run in _SEQUENCES):
        return True
    local_part = email.split("@", 1)[0].lower()
    if local_part and len(local_part) >= 4 and local_part in lowered:
        return True
    return any(candidate in _blocklist() for candidate in candidates if candidate)


@cache
def _blocklist() -> frozenset[str]:
    # The 30,000 most common passwords of public breach corpora, as shipped by the
    # zxcvbn package; reading its list avoids copying it into this repository.
    from zxcvbn.frequency_lists import FREQUENCY_LISTS  # type: ignore[import-untyped]

    return frozenset(FREQUENCY_LISTS["passwords"])
