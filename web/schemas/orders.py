"""The bodies of the reservation and order endpoints: what a client may send (strict,
unknown fields refused) and what it gets back (money as decimal strings, times ISO 8601 UTC).

API product ids are the catalog's integers; the engine knows a product as `str(id)`.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from engine.models import LineRequest, Order, Reservation, ReservationStatus
from engine.settings import Settings
from engine.states import OrderStatus
from engine.validation import MAX_LINES, MAX_QUANTITY, NAME
from web.bodies import INTEGRAL
from web.money import to_decimal_string
from web.pagination import DEFAULT_LIMIT, MAX_LIMIT
from web.responses import iso, iso_ms

# -- requests ---------------------------------------------------------------------------------

ProductId = Annotated[
    StrictInt, Field(gt=0, le=2**63 - 1, description="catalog product id"), INTEGRAL
]
Quantity = Annotated[StrictInt, Field(gt=0, le=MAX_QUANTITY, description="units"), INTEGRAL]
# The engine's rule for a name (it refuses others with its own message); stated here for the
# document.
Warehouse = Annotated[
    StrictStr,
    Field(min_length=1, max_length=64, json_schema_extra={"pattern": f"^{NAME.pattern}$"}),
]
TtlSeconds = Annotated[
    StrictFloat,  # takes whole numbers too, never strings or booleans
    Field(gt=0, allow_inf_nan=False, description="seconds, within the server's bounds"),
]
RecordId = Annotated[StrictStr, Field(min_length=1, max_length=64)]


def ttl_bounds(settings: Settings) -> tuple[float, float]:
    """The ttl_seconds a client may ask for, in seconds (RESERVATION_TTL_MIN..MAX): the
    document states them, web/services/reservations.py holds requests to them."""
    return settings.reservation_ttl_min_ms / 1000, settings.reservation_ttl_max_ms / 1000


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LineIn(Body):
    product: ProductId
    quantity: Quantity
    warehouse: Warehouse | None = None


class LinesIn(Body):
    """Either the original shape `{"product", "quantity"}` or the cart `{"lines": [...]}`."""

    product: ProductId | None = None
    quantity: Quantity | None = None
    lines: Annotated[list[LineIn], Field(min_length=1, max_length=MAX_LINES)] | None = None
    allow_split: StrictBool = True

    def _check_shape(self, others: bool = False) -> None:
        single = self.product is not None or self.quantity is not None
        if single and (self.product is None or self.quantity is None):
            raise ValueError("give both product and quantity")
        shapes = [single, self.lines is not None, others]
        if sum(shapes) != 1:
            raise ValueError(self._shape_message(sum(shapes)))

    def _shape_message(self, count: int) -> str:
        what = "product and quantity, or lines"
        return f"give {what}" if count == 0 else f"give {what}, not both"

    def line_requests(self) -> list[LineRequest]:
        if self.lines is None:
            product, quantity = self.product, self.quantity
            assert product is not None
            assert quantity is not None
            return [LineRequest(str(product), quantity)]
        return [LineRequest(str(li.product), li.quantity, li.warehouse) for li in self.lines]


class ReserveIn(LinesIn):
    ttl_seconds: TtlSeconds | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> Self:
        self._check_shape()
        return self


class OrderIn(LinesIn):
    """A committed reservation `{"reservation": id}`, or a direct order (reserve + commit)."""

    reservation: RecordId | None = None

    def _shape_message(self, count: int) -> str:
        what = "reservation, product and quantity, or lines"
        return f"give one of: {what}" if count == 0 else f"give only one of: {what}"

    @model_validator(mode="after")
    def _one_shape(self) -> Self:
        self._check_shape(others=self.reservation is not None)
        if self.reservation is not None and "allow_split" in self.model_fields_set:
            raise ValueError("allow_split applies to a direct order, not to a reservation")
        return self


class ExtendIn(Body):
    ttl_seconds: TtlSeconds | None = None


class WaitlistJoin(Body):
    """Wait for `quantity` units of a sold-out product; `allow_partial`: take fewer units when
    fewer come back, rather than wait for all of them."""

    quantity: Quantity
    allow_partial: StrictBool = False


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _any_case(statuses: type[Enum]) -> WithJsonSchema:
    """A status as the document states it: its values in any case, as `_lower` takes them (an
    enum would call "PENDING" invalid)."""
    words = ["".join(f"[{c}{c.upper()}]" if c.isalpha() else c for c in s.value) for s in statuses]
    return WithJsonSchema(
        {
            "type": "string",
            "pattern": f"^({'|'.join(words)})$",
            "description": f"{', '.join(s.value for s in statuses)}: in any case",
        }
    )


class TransitionIn(Body):
    status: Annotated[OrderStatus, _any_case(OrderStatus)]

    status_lower = field_validator("status", mode="before")(_lower)


# -- query strings ----------------------------------------------------------------------------

Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT)]
DECIMAL = re.compile(r"\d{1,13}(\.\d{1,6})?")


class ListQuery(Body):
    cursor: Annotated[str, Field(max_length=1000)] | None = None
    limit: Limit = DEFAULT_LIMIT
    user: Annotated[str, Field(min_length=1, max_length=150)] | None = None
    consistent_with: Annotated[str, Field(max_length=100)] | None = None


class ReservationQuery(ListQuery):
    status: Annotated[ReservationStatus, _any_case(ReservationStatus)] | None = None

    status_lower = field_validator("status", mode="before")(_lower)


class OrderQuery(ListQuery):
    """Bounds that leave nothing between them (start_date after end_date, min_total above
    max_total) are an empty list, not an error: no query schema can forbid them."""

    status: Annotated[OrderStatus, _any_case(OrderStatus)] | None = None
    start_date: date | None = Field(None, description="YYYY-MM-DD, inclusive, UTC")
    end_date: date | None = Field(None, description="YYYY-MM-DD, inclusive, UTC")
    min_total: Decimal | None = Field(None, description='a decimal amount like "19.99"')
    max_total: Decimal | None = Field(None, description='a decimal amount like "19.99"')
    sort: Literal["newest", "highest_value"] = "newest"

    status_lower = field_validator("status", mode="before")(_lower)

    @field_validator("start_date", "end_date", mode="before")
    @classmethod
    def _iso_date(cls, value: object) -> object:
        if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError("use YYYY-MM-DD")
        return value

    @field_validator("min_total", "max_total", mode="before")
    @classmethod
    def _amount(cls, value: object) -> object:
        if not isinstance(value, str) or not DECIMAL.fullmatch(value):
            raise ValueError('use a decimal amount like "19.99"')
        return value


# -- responses --------------------------------------------------------------------------------


UtcTime = Annotated[datetime, PlainSerializer(iso, return_type=str)]
CANONICAL_INT = re.compile(r"[1-9][0-9]{0,17}")


def api_product(engine_product: str) -> int | str:
    """The API's product id: the catalog's integer; a product made outside the catalog (a
    bench or chaos run) keeps its engine name."""
    return int(engine_product) if CANONICAL_INT.fullmatch(engine_product) else engine_product


class LineOut(BaseModel):
    product: int | str
    warehouse: str
    quantity: int


class ReservationOut(BaseModel):
    id: str
    user: str
    status: ReservationStatus
    lines: list[LineOut]
    expires_at: UtcTime
    created_at: UtcTime
    order: str | None
    # 'waitlist': handed over by the product's waitlist when units came back
    source: Literal["request", "waitlist"] = "request"


class OrderLineOut(LineOut):
    unit_price: str


class OrderOut(BaseModel):
    id: str
    user: str
    status: OrderStatus
    reservation: str | None
    lines: list[OrderLineOut]
    total: str
    currency: str
    created_at: UtcTime
    updated_at: UtcTime


def reservation_out(r: Reservation) -> ReservationOut:
    return ReservationOut(
        id=r.id,
        user=r.owner,
        status=r.status,
        lines=[
            LineOut(product=api_product(li.product), warehouse=li.warehouse, quantity=li.quantity)
            for li in r.lines
        ],
        expires_at=r.expires_at,
        created_at=r.created_at,
        order=r.order_id,
        source="waitlist" if r.source == "waitlist" else "request",
    )


def reservation_data(r: Reservation) -> dict[str, Any]:
    """`reservation_out(r).model_dump(mode="json")`, what the envelope carries, built without
    the model: the hot path's answer (tests/test_units.py holds the two to the same JSON)."""
    return {
        "id": r.id,
        "user": r.owner,
        "status": r.status.value,
        "lines": [
            {"product": api_product(li.product), "warehouse": li.warehouse, "quantity": li.quantity}
            for li in r.lines
        ],
        "expires_at": iso_ms(r.expires_at_ms),
        "created_at": iso_ms(r.created_at_ms),
        "order": r.order_id,
        "source": r.source,
    }


def order_out(o: Order) -> OrderOut:
    return OrderOut(
        id=o.id,
        user=o.owner,
        status=o.status,
        reservation=o.reservation_id,
        lines=[
            OrderLineOut(
                product=api_product(li.product),
                warehouse=li.warehouse,
                quantity=li.quantity,
                unit_price=to_decimal_string(li.unit_price, o.currency),
            )
            for li in o.lines
        ],
        total=to_decimal_string(o.total, o.currency),
        currency=o.currency,
        created_at=o.created_at,
        updated_at=o.updated_at,
    )
