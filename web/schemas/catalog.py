"""Request bodies and query strings of the catalog, stock, warehouse and audit endpoints.

Every model forbids unknown fields and constrains its values, so bad input is a 400
`invalid_input` naming each problem before anything is read or written. Quantities are JSON
integers (5 or 5.0): no fractions, no strings, no booleans. Each constraint is one that the
model's JSON Schema states too (the OpenAPI document is built from it), so that a request the
document allows is never refused as bad input.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from engine.validation import MAX_STOCK_DELTA
from web.bodies import INTEGRAL
from web.money import ANY_PRICE

# The whitespace a name is trimmed of: the characters the pattern below names, so that what
# the document calls blank is what the server finds empty.
BLANK = " \t\n\x0b\x0c\r"
# Some text besides that whitespace (and no NUL, which no text may hold).
NOT_BLANK = r"^[^\x00]*[^\x00\t\n\x0b\x0c\r ][^\x00]*$"
Name = Annotated[
    str,
    StringConstraints(max_length=200, pattern=NOT_BLANK),
    AfterValidator(lambda name: name.strip(BLANK)),
]
Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
Description = Annotated[str, StringConstraints(max_length=5000)]
# A decimal amount such as "19.99" that is a price in some currency; the product's currency
# decides how many places and how large (web/money.py).
Price = Annotated[str, StringConstraints(max_length=20, pattern=ANY_PRICE)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
# Any warehouse name the engine accepts; whether it exists is the warehouses table's say.
WarehouseName = Annotated[
    str, StringConstraints(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
]
# New warehouses get a slug.
WarehouseSlug = Annotated[str, StringConstraints(max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
Units = Annotated[StrictInt, Field(ge=0, le=MAX_STOCK_DELTA), INTEGRAL]
Short = Annotated[str, StringConstraints(max_length=200)]
# A purchase limit: units of one product (lua/limits.lua); null is no limit.
Limit = Annotated[StrictInt, Field(ge=1, le=MAX_STOCK_DELTA), INTEGRAL]
LIMITS = ("max_per_customer", "min_quantity", "quantity_increment", "max_per_order")

# Which way each reason moves stock; correction goes either way.
REASON_SIGN: dict[str, int] = {"received": 1, "returned": 1, "damaged": -1, "lost": -1}
Reason = Literal["received", "returned", "damaged", "lost", "correction"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpeningStock(Strict):
    warehouse: WarehouseName
    quantity: Units


class ProductCreate(Strict):
    name: Name
    sku: Sku
    price: Price
    currency: Currency | None = None
    description: Description = ""
    total_stock: Units | None = None
    stock: Annotated[list[OpeningStock], Field(min_length=1, max_length=100)] | None = None
    # what one customer may buy (lua/limits.lua): null or left out, no limit
    max_per_customer: Limit | None = None
    min_quantity: Limit | None = None
    quantity_increment: Limit | None = None
    max_per_order: Limit | None = None

    @model_validator(mode="after")
    def _one_kind_of_stock(self) -> ProductCreate:
        if self.total_stock is not None and self.stock is not None:
            raise ValueError("give either total_stock or stock, not both")
        return self

    def opening(self, default_warehouse: str) -> dict[str, int]:
        """Opening stock per warehouse: total_stock goes into the default warehouse; a
        warehouse named twice in `stock` gets both quantities (no schema can forbid the
        repeat, and the sum is what the list says)."""
        if self.stock is None:
            return {default_warehouse: self.total_stock or 0}
        opening: dict[str, int] = {}
        for line in self.stock:
            opening[line.warehouse] = opening.get(line.warehouse, 0) + line.quantity
        return opening


class ProductPut(Strict):
    """Replace every catalog field (the currency and the stock are not catalog fields here).
    A purchase limit left out is kept; null removes it."""

    name: Name
    sku: Sku
    price: Price
    description: Description
    max_per_customer: Limit | None = None
    min_quantity: Limit | None = None
    quantity_increment: Limit | None = None
    max_per_order: Limit | None = None


def _some_fields(schema: dict[str, Any]) -> None:
    # A patch names at least one field, and none but a limit as null (no default to show).
    schema["minProperties"] = 1
    for field in schema["properties"].values():
        field.pop("default", None)


class ProductPatch(Strict):
    model_config = ConfigDict(json_schema_extra=_some_fields)

    name: Name | SkipJsonSchema[None] = None
    sku: Sku | SkipJsonSchema[None] = None
    price: Price | SkipJsonSchema[None] = None
    description: Description | SkipJsonSchema[None] = None
    # null removes the limit
    max_per_customer: Limit | None = None
    min_quantity: Limit | None = None
    quantity_increment: Limit | None = None
    max_per_order: Limit | None = None

    @model_validator(mode="after")
    def _some_field(self) -> ProductPatch:
        if not self.model_fields_set:
            named = ", ".join(("name", "sku", "price", "description", *LIMITS))
            raise ValueError(f"name at least one of: {named}")
        nulls = sorted(f for f in self.model_fields_set - set(LIMITS) if getattr(self, f) is None)
        if nulls:
            raise ValueError(f"must not be null: {', '.join(nulls)}")
        return self


# How many products one live stream may follow.
MAX_STREAMED = 100


class StreamQuery(Strict):
    """`GET /api/stock/stream/?ids=1,2,3`: the products to follow, by id, comma-separated."""

    ids: Annotated[
        str,
        StringConstraints(
            pattern=rf"^[1-9][0-9]{{0,18}}(,[1-9][0-9]{{0,18}}){{0,{MAX_STREAMED - 1}}}$"
        ),
    ]

    def product_ids(self) -> list[int]:
        """The ids, each once, in order; an id past the largest one a product can have is
        one that does not exist (404)."""
        return list(dict.fromkeys(int(i) for i in self.ids.split(",")))


class StockAdjust(Strict):
    quantity: Annotated[StrictInt, Field(ge=-MAX_STOCK_DELTA, le=MAX_STOCK_DELTA), INTEGRAL]
    reason: Reason
    warehouse: WarehouseName | None = None

    @field_validator("quantity")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must not be zero")
        return value

    @model_validator(mode="after")
    def _sign_fits_reason(self) -> StockAdjust:
        sign = REASON_SIGN.get(self.reason)
        if sign is not None and (self.quantity > 0) != (sign > 0):
            way = "add units (quantity > 0)" if sign > 0 else "remove units (quantity < 0)"
            raise ValueError(f"reason {self.reason!r} must {way}")
        return self


class WarehouseCreate(Strict):
    id: WarehouseSlug
    name: Name
    priority: Annotated[StrictInt, Field(ge=-(10**6), le=10**6), INTEGRAL] = 0


class Paging(Strict):
    cursor: Annotated[str, StringConstraints(max_length=1000)] | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50


class ProductQuery(Paging):
    search: Short | None = None
    in_stock: bool | None = None


class AuditQuery(Paging):
    """`since` after `until` is an empty log, not an error: no query schema can forbid it."""

    action: Annotated[str, StringConstraints(max_length=64)] | None = None
    object_type: Annotated[str, StringConstraints(max_length=32)] | None = None
    object_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    actor: Annotated[str, StringConstraints(max_length=150)] | None = None
    request_id: Annotated[str, StringConstraints(max_length=128)] | None = None
    since: datetime | None = None
    until: datetime | None = None

    @field_validator("since", "until", mode="before")
    @classmethod
    def _iso(cls, value: object) -> object:
        # pydantic would also read a number of seconds ("0.5") as a time; the document says
        # a date-time.
        if not isinstance(value, str) or not re.match(r"\d{4}-\d{2}-\d{2}[Tt ]", value):
            raise ValueError("use an ISO 8601 date-time, like 2024-01-31T12:00:00Z")
        return value

    @field_validator("since", "until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # A time without an offset is taken as UTC. One beyond the UTC datetimes
        # (0001-01-01T00:00+01:00) bounds the log as the first or last of them does.
        if value is None:
            return None
        try:
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except OverflowError:
            edge = datetime.min if value.year == datetime.min.year else datetime.max
            return edge.replace(tzinfo=UTC)


def as_dict(model: BaseModel) -> dict[str, Any]:
    """The catalog fields a client actually sent (the purchase limits are the engine's:
    `limits_sent`)."""
    return {f: getattr(model, f) for f in model.model_fields_set if f not in LIMITS}


def limits_sent(model: BaseModel) -> dict[str, int | None]:
    """The purchase limits a client actually sent (None: remove the limit)."""
    return {f: getattr(model, f) for f in LIMITS if f in model.model_fields_set}
