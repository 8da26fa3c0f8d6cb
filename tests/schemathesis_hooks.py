"""Schemathesis hooks for tests/test_schemathesis.py (its runs load them by SCHEMATHESIS_HOOKS).

An Idempotency-Key names one request: a client makes a new key for each new request and sends
the same key again only to retry that same request. The document can't say "unique", and
schemathesis draws short keys ("0", "A") over and over, for requests with other bodies: the
API rightly answers those 422 `idempotency_mismatch`. So each request's key is made unique
here (the way schemathesis advises for unique fields) in the requests the document allows;
one it forbids is meant to be refused, and 422 is a refusal (a changed case would also lose
what schemathesis meant to leave out of it, such as the Authorization header).

A `consistent_with` token names a position in a partition's outbox; one that no write has
reached yet is refused at once, 400 `invalid_consistency_token` (issue 9: a client must not be
able to make a list wait for a write that never happened), and the document can't state "a
position some write reached". So in the requests the document allows, a drawn token keeps its
form and partition but names the first position (`p<N>-0-0`), which every write has passed.
"""

from __future__ import annotations

import itertools
from typing import Any

import schemathesis

_HEADER = "Idempotency-Key"
_MAX_LENGTH = 255  # the document's maxLength
_requests = itertools.count(1)


@schemathesis.hook
def before_call(
    context: schemathesis.HookContext, case: schemathesis.Case[Any], kwargs: Any
) -> None:
    if case.meta is not None and case.meta.generation.mode.is_negative:
        return  # meant to be refused: a 422 for a reused key is one of the refusals expected
    token = case.query.get("consistent_with") if case.query else None
    if isinstance(token, str) and token.startswith("p") and "-" in token:
        case.query["consistent_with"] = token.split("-", 1)[0] + "-0-0"
    key = case.headers.get(_HEADER) if case.headers else None
    if isinstance(key, str) and 0 < len(key) <= _MAX_LENGTH:
        suffix = f"~{next(_requests)}"
        case.headers[_HEADER] = key[: max(0, _MAX_LENGTH - len(suffix))] + suffix
