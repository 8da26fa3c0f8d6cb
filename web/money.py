"""Money at the edge: integer minor units inside, a decimal string in JSON ("19.99")."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from web.errors import ApiError

# ISO 4217 minor-unit exponents that differ from 2.
EXPONENTS = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "JOD": 3}


def exponent(currency: str) -> int:
    return EXPONENTS.get(currency.upper(), 2)


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
    if minor > 10**12:
        raise ApiError(400, "invalid_input", f"{field} is too large")
    return int(minor)
