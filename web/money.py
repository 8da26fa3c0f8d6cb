"""Money at the edge: integer minor units inside, a decimal string in JSON ("19.99")."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from web.errors import ApiError

# ISO 4217 minor-unit exponents that differ from 2.
EXPONENTS = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "JOD": 3}
MAX_MINOR = 10**12  # the largest price, in minor units


def exponent(currency: str) -> int:
    return EXPONENTS.get(currency.upper(), 2)


def price_pattern(places: int) -> str:
    """The decimal strings `to_minor` takes for a currency with `places` decimal places: at
    most that many places (zeros may follow) and at most MAX_MINOR minor units. A regular
    expression, so that the OpenAPI document can say it."""
    whole = len(str(MAX_MINOR)) - 1 - places
    fraction = rf"\.[0-9]{{1,{places}}}0*" if places else r"\.0+"
    return rf"^0*([0-9]{{1,{whole}}}({fraction})?|10{{{whole}}}(\.0+)?)$"


# A price in some currency; which of them fit a product is its own currency's say.
ANY_PRICE = "^(" + "|".join(price_pattern(p)[1:-1] for p in sorted({2, *EXPONENTS.values()})) + ")$"


def to_decimal_string(minor: int, currency: str) -> str:
    places = exponent(currency)
    return f"{Decimal(minor).scaleb(-places):.{places}f}"


def to_minor(value: str | int | float | Decimal, currency: str, field: str = "price") -> int:
    """Parse an amount given as a decimal string (or a number) into minor units, exactly."""
    if isinstance(value, bool):
        raise ApiError(400, "invalid_input", f'{field} must be a decimal amount like "19.99"')
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ApiError(
            400, "invalid_input", f'{field} must be a decimal amount like "19.99"'
        ) from None
    places = exponent(currency)
    if not amount.is_finite() or amount < 0:
        raise ApiError(400, "invalid_input", f"{field} must be a finite amount >= 0")
    minor = amount.scaleb(places)
    if minor != minor.to_integral_value():
        raise ApiError(
            400, "invalid_input", f"{field} has more than {places} decimal places for {currency}"
        )
    if minor > MAX_MINOR:
        raise ApiError(400, "invalid_input", f"{field} is too large")
    return int(minor)


def reprice(value: str, currency: str) -> int:
    """A new price for a product whose currency is set. A price that the currency can't hold
    conflicts with the product (409): the request is well formed — the document says which
    prices fit some currency, it can't know the product's."""
    try:
        return to_minor(value, currency)
    except ApiError as exc:
        details = {"price": value, "currency": currency}
        raise ApiError(409, "price_currency_mismatch", exc.message, details) from None
