"""Request bodies and query strings of the catalog, stock, warehouse and audit endpoints.

Every model forbids unknown fields and constrains its values, so bad input is a 400
`invalid_input` naming each problem before anything is read or written. Quantities are JSON
integers only: no floats, no strings, no booleans.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)

from engine.validation import MAX_STOCK_DELTA

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
Description = Annotated[str, StringConstraints(max_length=5000)]
# A decimal amount such as "19.99"; the currency decides how many places are allowed.
Price = Annotated[str, StringConstraints(max_length=20, pattern=r"^[0-9]+(\.[0-9]+)?$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
# Any warehouse name the engine accepts; whether it exists is the warehouses table's say.
WarehouseName = Annotated[
    str, StringConstraints(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
]
# New warehouses get a slug.
WarehouseSlug = Annotated[str, StringConstraints(max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
Units = Annotated[StrictInt, Field(ge=0, le=MAX_STOCK_DELTA)]
Short = Annotated[str, StringConstraints(max_length=200)]

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

    @model_validator(mode="after")
    def _one_kind_of_stock(self) -> ProductCreate:
        if self.total_stock is not None and self.stock is not None:
            raise ValueError("give either total_stock or stock, not both")
        if self.stock is not None:
            names = [s.warehouse for s in self.stock]
            if len(set(names)) != len(names):
                raise ValueError("stock names a warehouse more than once")
        return self

    def opening(self, default_warehouse: str) -> dict[str, int]:
        """Opening stock per warehouse: total_stock goes into the default warehouse."""
        if self.stock is not None:
            return {s.warehouse: s.quantity for s in self.stock}
        return {default_warehouse: self.total_stock or 0}


class ProductPut(Strict):
    """Replace every catalog field (the currency and the stock are not catalog fields here)."""

    name: Name
    sku: Sku
    price: Price
    description: Description


class ProductPatch(Strict):
    name: Name | None = None
    sku: Sku | None = None
    price: Price | None = None
    description: Description | None = None

    @model_validator(mode="after")
    def _some_field(self) -> ProductPatch:
        if not self.model_fields_set:
            raise ValueError("name at least one of: name, sku, price, description")
        nulls = sorted(f for f in self.model_fields_set if getattr(self, f) is None)
        if nulls:
            raise ValueError(f"must not be null: {', '.join(nulls)}")
        return self


class StockAdjust(Strict):
    quantity: Annotated[StrictInt, Field(ge=-MAX_STOCK_DELTA, le=MAX_STOCK_DELTA)]
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
    priority: Annotated[StrictInt, Field(ge=-(10**6), le=10**6)] = 0


class Paging(Strict):
    cursor: Annotated[str, StringConstraints(max_length=1000)] | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50


class ProductQuery(Paging):
    search: Short | None = None
    in_stock: bool | None = None


class AuditQuery(Paging):
    action: Annotated[str, StringConstraints(max_length=64)] | None = None
    object_type: Annotated[str, StringConstraints(max_length=32)] | None = None
    object_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    actor: Annotated[str, StringConstraints(max_length=150)] | None = None
    request_id: Annotated[str, StringConstraints(max_length=128)] | None = None
    since: datetime | None = None
    until: datetime | None = None

    @field_validator("since", "until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # A time without an offset is taken as UTC.
        if value is None:
            return None
        try:
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+01:00 is before the first UTC datetime
            raise ValueError("is out of range") from None

    @model_validator(mode="after")
    def _range(self) -> AuditQuery:
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError("since must not be after until")
        return self


def as_dict(model: BaseModel) -> dict[str, Any]:
    """The fields a client actually sent."""
    return {f: getattr(model, f) for f in model.model_fields_set}
