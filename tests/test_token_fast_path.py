"""web/auth.py Keys._issued: the quick check of a token as the API issues it accepts only what
PyJWT's decode (Keys._verify) accepts, with the same claims — shown over tokens of every shape:
good ones, other headers and algorithms, unknown and odd key ids, other keys, tampered parts,
missing, mistyped, expired and future claims, `nbf` and `aud`, broken encodings. Whatever the
quick check leaves (None), PyJWT decides, as before."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.settings import Settings
from web.auth import ISSUER, Keys, Principal
from web.errors import ApiError

SECRET = "s" * 64
OTHER = "o" * 64
KEYS = Keys(Settings(jwt_keys=f"main:{SECRET},old:{OTHER}", database_url="postgresql://x/y"))


def pyjwt_claims(token: str) -> dict[str, Any] | None:
    try:
        return KEYS._verify(token)
    except ApiError:
        return None


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_token_as_issued_passes_the_quick_check_with_pyjwts_claims() -> None:
    for staff in (False, True):
        for kind in ("access", "refresh"):
            token = KEYS.issue(Principal("42", "alice", staff), kind, version=3)
            claims = KEYS._issued(token)
            assert claims is not None
            assert claims == pyjwt_claims(token)
            assert KEYS.verify(token, kind)["sub"] == "42"


def _non_canonical(segment: str) -> str:
    """The same bytes in another base64url: the last character with its unused bits set."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused = {2: 4, 3: 2}[len(segment) % 4]  # bits of the last character past the data
    last = alphabet.index(segment[-1])
    return segment[:-1] + alphabet[last | ((1 << unused) - 1)]


def test_a_segment_in_another_base64url_is_left_to_pyjwt_which_refuses_it() -> None:
    # hypothesis found it: a signature whose last character differs only in its unused bits
    # decodes to the same bytes; the quick check took it, PyJWT (as installed) refuses it
    token = KEYS.issue(Principal("42", "alice", False), "access", version=3)
    head, body, sig = token.split(".")
    for i, segment in enumerate((head, body, sig)):
        if len(segment) % 4 == 0:
            continue  # (no unused bits to set)
        parts = [head, body, sig]
        parts[i] = _non_canonical(segment)
        odd = ".".join(parts)
        assert odd != token
        same = base64.urlsafe_b64decode(parts[i] + "==")
        assert same == base64.urlsafe_b64decode(segment + "==")
        assert KEYS._issued(odd) is None
        assert pyjwt_claims(odd) is None


now = int(time.time())
GOOD = {
    "sub": "7", "name": "bob", "staff": False, "typ": "access", "iat": now - 5,
    "exp": now + 600, "iss": ISSUER, "jti": "a" * 32, "ver": 0,
}  # fmt: skip
ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
    st.text(max_size=5), st.just([1]), st.just({"a": 1}),
)  # fmt: skip
claim_changes = st.dictionaries(
    st.sampled_from([*GOOD, "nbf", "aud", "extra"]),
    st.one_of(
        ODD_VALUES,
        st.sampled_from([now - 10, now + 10, now + 10**6, now, ISSUER, "other", "0", ""]),
    ),
    max_size=3,
)
headers = st.one_of(
    st.just({"alg": "HS256", "typ": "JWT", "kid": "main"}),
    st.just({"alg": "HS256", "typ": "JWT", "kid": "old"}),
    st.fixed_dictionaries(
        {},
        optional={
            "alg": st.sampled_from(["HS256", "HS384", "none", "hs256", ""]),
            "typ": st.sampled_from(["JWT", "jwt", "at+jwt"]),
            "kid": st.one_of(st.sampled_from(["main", "old", "nope", ""]), ODD_VALUES),
            "crit": st.just(["exp"]),
            "cty": st.just("JWT"),
        },
    ),
)


@st.composite
def tokens(draw: st.DrawFn) -> str:
    claims = {**GOOD, **draw(st.one_of(st.just({}), claim_changes))}
    for name in draw(st.one_of(st.just(set()), st.sets(st.sampled_from(list(GOOD)), max_size=2))):
        claims.pop(name, None)
    header = draw(headers)
    head = b64(json.dumps(header, separators=(",", ":")).encode())
    body = b64(json.dumps(claims, separators=(",", ":")).encode())  # (json: any int)
    kid = header.get("kid")
    key = draw(
        st.sampled_from([SECRET, OTHER, "w" * 64])
        if not isinstance(kid, str)
        else st.sampled_from([SECRET if kid == "main" else OTHER, "w" * 64])
    )
    alg = header.get("alg")
    digest = hashlib.sha384 if alg == "HS384" else hashlib.sha256
    sig = b64(hmac.new(key.encode(), f"{head}.{body}".encode(), digest).digest())
    token = f"{head}.{body}.{sig}"
    how = draw(st.sampled_from(["as is", "as is", "flip", "pad", "dot", "strip"]))
    if how == "flip":  # one character of the signature changed
        i = draw(st.integers(0, len(sig) - 1))
        sig = sig[:i] + ("A" if sig[i] != "A" else "B") + sig[i + 1 :]
        token = f"{head}.{body}.{sig}"
    elif how == "pad":
        token = f"{head}=.{body}.{sig}"
    elif how == "dot":
        token = token + "."
    elif how == "strip":
        token = token[:-1]
    return token


@settings(max_examples=300, deadline=None)
@given(tokens())
def test_the_quick_check_accepts_only_what_pyjwt_accepts_with_the_same_claims(token: str) -> None:
    quick = KEYS._issued(token)
    if quick is not None:
        assert quick == pyjwt_claims(token)


@pytest.mark.parametrize(
    "token",
    ["", "a.b", "a.b.c", "a.b.c.d", "...", "é.é.é", "x" * 10_000],
)
def test_junk_is_left_to_pyjwt(token: str) -> None:
    assert KEYS._issued(token) is None
    with pytest.raises(ApiError) as refused:
        KEYS.verify(token, "access")
    assert refused.value.code == "invalid_token"
