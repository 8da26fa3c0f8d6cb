"""The OpenAPI 3.1 document, built from one table of operations (web/openapi/catalog.py and
web/openapi/orders.py hold the rows).

A row says what an operation takes (body, query, path parameters, headers), what its `data`
is, who may call it and which error codes it answers with which status. Bodies and queries
are the endpoints' own pydantic models (`model_json_schema()`, their `$defs` gathered into
`components/schemas`); where a route has no response model yet its row carries the schema.
This module adds what every operation shares (web/openapi/conventions.py): the envelope
around `data`, the Error schema, the bearer scheme, the X-Request-ID / Idempotency-Key /
X-Consistency-Token headers, and the errors that follow from the row (a body can be
malformed, a token can be missing, Redis or the database can be down).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from web.bodies import NO_NUL
from web.openapi.conventions import (
    ACCESS_ERRORS,
    BACKEND_ERRORS,
    BODY_ERRORS,
    DESCRIPTION,
    HEADERS,
    IDEMPOTENCY_ERRORS,
    PARAMETERS,
    RATE_LIMIT_ERRORS,
    REASONS,
    REF,
    SCHEMAS,
    TITLE,
    Access,
    Schema,
    closed,
    ref,
)


@dataclass(frozen=True)
class Operation:
    """One row of the table: an operation of the API as a client sees it."""

    method: str
    path: str
    name: str  # the operationId
    summary: str
    tag: str
    access: Access
    data: type[BaseModel] | Schema | None  # the envelope's `data` on success
    status: int = 200
    listing: bool = False  # `data` is a list, with `next` and `previous` cursors
    body: type[BaseModel] | Schema | None = None
    body_required: bool = True
    body_examples: Mapping[str, Any] = field(default_factory=dict)
    query: type[BaseModel] | None = None
    query_schemas: Mapping[str, Schema] = field(default_factory=dict)  # replace a field's
    path_params: Mapping[str, Schema] = field(default_factory=dict)
    errors: Mapping[int, Sequence[str]] = field(default_factory=dict)
    idempotent: bool = False  # takes Idempotency-Key
    token: bool = False  # the response carries X-Consistency-Token
    consistent_reads: bool = False  # takes consistent_with, answers X-Consistency
    backend: bool = True  # reads Redis or the database: 503 when they are down
    rate_limited: bool = True  # counts against the caller's rate limit: 429 over it
    raw: str | None = None  # a media type answered as is, without the envelope
    conditional: bool = False  # answers ETag, takes If-None-Match: 304 with no body
    description: str = ""


def without_null(schema: Schema) -> Schema:
    """`X | None` as pydantic writes it (`anyOf: [X, null]`), less the null: for a value that
    may be left out but not sent as null (a query parameter, a field of one body shape)."""
    options = schema.get("anyOf")
    if not isinstance(options, list):
        return schema
    kept = [o for o in options if o != {"type": "null"}]
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
    if len(kept) == 1:
        return {**kept[0], **rest}
    return {**rest, "anyOf": kept}


def _refuse_nul(schema: Any) -> None:
    """Request schemas: a text without a pattern (or format, or fixed values) of its own gets
    NO_NUL, the rule web/bodies.py holds every text of a body or query to."""
    if isinstance(schema, dict):
        if schema.get("type") == "string" and not schema.keys() & {"pattern", "format", "enum"}:
            schema["pattern"] = NO_NUL
        for value in schema.values():
            _refuse_nul(value)
    elif isinstance(schema, list):
        for item in schema:
            _refuse_nul(item)


def _close_objects(schema: Any) -> None:
    """Response schemas are exact: an object lists every property the API sends."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema:
            schema.setdefault("additionalProperties", False)
        for value in schema.values():
            _close_objects(value)
    elif isinstance(schema, list):
        for item in schema:
            _close_objects(item)


class _Components:
    def __init__(self) -> None:
        self.schemas: dict[str, Schema] = {}

    def put(self, name: str, schema: Schema) -> Schema:
        known = self.schemas.setdefault(name, schema)
        if known != schema:
            raise ValueError(f"two different schemas are both named {name!r}")
        return ref(name)

    def model(self, model: type[BaseModel], *, response: bool = False) -> Schema:
        """A model's schema in components/schemas (its `$defs` beside it); a `$ref` to it."""
        mode: Literal["validation", "serialization"] = "serialization" if response else "validation"
        schema = copy.deepcopy(model.model_json_schema(ref_template=REF, mode=mode))
        if response:
            _close_objects(schema)
        else:
            _refuse_nul(schema)
        for name, definition in schema.pop("$defs", {}).items():
            self.put(name, definition)
        return self.put(model.__name__, schema)

    def inline(self, model: type[BaseModel]) -> Schema:
        """A model's schema (for query parameters), its `$defs` put in components/schemas."""
        schema = copy.deepcopy(model.model_json_schema(ref_template=REF))
        _refuse_nul(schema)
        for name, definition in schema.pop("$defs", {}).items():
            self.put(name, definition)
        return schema

    def schema(self, value: type[BaseModel] | Schema, *, response: bool = False) -> Schema:
        """A schema for the document: a model's `$ref`, or a written one (its `$defs`, if
        it has any, moved to components/schemas)."""
        if not isinstance(value, dict):
            return self.model(value, response=response)
        schema = copy.deepcopy(value)
        if not response:
            _refuse_nul(schema)
        for name, definition in schema.pop("$defs", {}).items():
            self.put(name, definition)
        return schema


def _merge(*tables: Mapping[int, Sequence[str]]) -> dict[int, list[str]]:
    merged: dict[int, list[str]] = {}
    for table in tables:
        for status, codes in table.items():
            merged.setdefault(status, [])
            merged[status] += [c for c in codes if c not in merged[status]]
    return dict(sorted(merged.items()))


def error_codes(op: Operation) -> dict[int, list[str]]:
    """Every status and error code `op` can answer with."""
    return _merge(
        BODY_ERRORS if op.body is not None else {},
        {400: ("invalid_input",)} if op.query is not None else {},
        ACCESS_ERRORS[op.access],
        IDEMPOTENCY_ERRORS if op.idempotent else {},
        BACKEND_ERRORS if op.backend else {},
        RATE_LIMIT_ERRORS if op.rate_limited else {},
        op.errors,
    )


def _header(name: str) -> Schema:
    return {"$ref": f"#/components/headers/{name}"}


def _success(op: Operation, parts: _Components) -> Schema:
    headers: Schema = {"X-Request-ID": _header("X-Request-ID")}
    if op.raw is not None:
        schema: Schema = parts.schema(op.data) if op.data is not None else {}
        content = {op.raw: {"schema": schema}}
        return {"description": op.summary, "headers": headers, "content": content}
    data = parts.schema(op.data, response=True) if op.data is not None else {}
    if op.listing:
        # The cursors given out have the form the operation takes back.
        form = {k: v for k, v in op.query_schemas.get("cursor", {}).items() if k == "pattern"}
        envelope = closed(
            {
                "request_id": {"type": "string"},
                "data": {"type": "array", "items": data},
                "next": {
                    "type": ["string", "null"],
                    **form,
                    "description": "cursor of the next page",
                },
                "previous": {
                    "type": ["string", "null"],
                    **form,
                    "description": "cursor of the page before",
                },
            }
        )
    else:
        envelope = closed({"request_id": {"type": "string"}, "data": data})
    if op.token:
        headers["X-Consistency-Token"] = _header("X-Consistency-Token")
    if op.idempotent:
        headers["Idempotent-Replayed"] = _header("Idempotent-Replayed")
    if op.consistent_reads:
        headers["X-Consistency"] = _header("X-Consistency")
    if op.conditional:
        headers["ETag"] = _header("ETag")
    return {
        "description": op.summary,
        "headers": headers,
        "content": {"application/json": {"schema": envelope}},
    }


def _failure(status: int, codes: list[str]) -> Schema:
    only_codes = {"properties": {"error": {"properties": {"code": {"enum": codes}}}}}
    headers: Schema = {"X-Request-ID": _header("X-Request-ID")}
    if status == 429:
        headers["Retry-After"] = _header("Retry-After")
    if status == 503:
        headers["Retry-After"] = {"description": "seconds to wait", "schema": {"type": "string"}}
    if status == 401:
        headers["WWW-Authenticate"] = _header("WWW-Authenticate")
    schema = {"allOf": [ref("ErrorEnvelope"), only_codes]}
    return {
        "description": f"{REASONS.get(status, 'Error')}: {', '.join(codes)}",
        "headers": headers,
        "content": {"application/json": {"schema": schema}},
    }


def _parameters(op: Operation, parts: _Components) -> list[Schema]:
    params: list[Schema] = [{"$ref": "#/components/parameters/X-Request-ID"}]
    if op.idempotent:
        params.append({"$ref": "#/components/parameters/Idempotency-Key"})
    if op.conditional:
        params.append({"$ref": "#/components/parameters/If-None-Match"})
    for name, schema in op.path_params.items():
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    if op.query is not None:
        query = parts.inline(op.query)
        required = set(query.get("required", []))
        for name, schema in query["properties"].items():
            final = copy.deepcopy(op.query_schemas.get(name) or without_null(schema))
            _refuse_nul(final)
            param: Schema = {"name": name, "in": "query", "required": name in required}
            if "description" in final:
                param["description"] = final["description"]
            params.append({**param, "schema": final})
    return params


def _operation(op: Operation, parts: _Components) -> Schema:
    doc: Schema = {
        "operationId": op.name,
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": _parameters(op, parts),
    }
    if op.description:
        doc["description"] = op.description
    if op.access != "open":
        doc["security"] = [{"bearer": []}]
    if op.body is not None:
        media: Schema = {"schema": parts.schema(op.body)}
        if op.body_examples:
            media["examples"] = {k: {"value": v} for k, v in op.body_examples.items()}
        doc["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": media},
        }
    responses = {str(op.status): _success(op, parts)}
    if op.conditional:
        responses["304"] = {
            "description": "Not Modified: the If-None-Match tag is still the answer (no body)",
            "headers": {"X-Request-ID": _header("X-Request-ID"), "ETag": _header("ETag")},
        }
    for status, codes in error_codes(op).items():
        responses[str(status)] = _failure(status, codes)
    doc["responses"] = responses
    return doc


def build(
    operations: Sequence[Operation], *, schemas: Mapping[str, Schema], version: str
) -> Schema:
    """The OpenAPI document of `operations`; `schemas` are the hand-written ones they name."""
    parts = _Components()
    for name, schema in {**SCHEMAS, **schemas}.items():
        parts.put(name, schema)
    paths: dict[str, dict[str, Schema]] = {}
    for op in operations:
        item = paths.setdefault(op.path, {})
        if op.method.lower() in item:
            raise ValueError(f"{op.method} {op.path} is in the table twice")
        item[op.method.lower()] = _operation(op, parts)
    tags = list(dict.fromkeys(op.tag for op in operations))
    document = {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": version, "description": DESCRIPTION},
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "an access token from POST /api/token/",
                }
            },
            "parameters": PARAMETERS,
            "headers": HEADERS,
            "schemas": dict(sorted(parts.schemas.items())),
        },
    }
    return copy.deepcopy(document)  # shares nothing with the tables
