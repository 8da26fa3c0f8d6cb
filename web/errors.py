"""HTTP errors: one exception type, and one table from domain errors to statuses.

Endpoints raise; they never catch a domain error. The app turns every error into the
envelope `{"request_id", "error": {"code", "message", "details"}}`.
"""

from __future__ import annotations

from typing import Any

from engine import errors as engine_errors


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


# The status of every refusal the engine can give.
ENGINE_STATUS: dict[type[engine_errors.EngineError], int] = {
    engine_errors.InvalidInput: 400,
    engine_errors.ProductNotFound: 404,
    engine_errors.WarehouseNotFound: 404,
    engine_errors.ReservationNotFound: 404,
    engine_errors.OrderNotFound: 404,
    engine_errors.InsufficientStock: 409,
    engine_errors.ReservationExpired: 409,
    engine_errors.ReservationNotLive: 409,
    engine_errors.ExtensionLimitReached: 409,
    engine_errors.InvalidTransition: 409,
    engine_errors.StatusChanged: 409,
    engine_errors.CurrencyMismatch: 409,
    engine_errors.CartTimeout: 503,
    engine_errors.LimitExceeded: 409,
    engine_errors.TooManyReservations: 409,
    engine_errors.InvalidQuantity: 422,
    engine_errors.InStock: 409,
    engine_errors.AlreadyWaiting: 409,
    engine_errors.NotWaiting: 404,
    engine_errors.IdempotencyMismatch: 422,
    # The lines' prices make it so, not the request's form: a conflict with the catalog.
    engine_errors.OrderTotalTooLarge: 409,
    engine_errors.IdCollision: 503,
    engine_errors.RedisBehind: 503,
    engine_errors.RedisUnverified: 503,
    engine_errors.NotReplicated: 503,
}


def _catalog_ids(value: Any) -> Any:
    """The engine names products by text; the API by the catalog's integer id."""
    if isinstance(value, dict):
        return {
            k: int(v)
            if k == "product" and isinstance(v, str) and v.isdigit() and v[0] != "0"
            else _catalog_ids(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_catalog_ids(v) for v in value]
    return value


def from_engine(exc: engine_errors.EngineError) -> ApiError:
    status = ENGINE_STATUS.get(type(exc), 400)
    details = _catalog_ids(exc.details())
    if isinstance(exc, engine_errors.InvalidInput):
        return ApiError(400, "invalid_input", exc.message, details)
    headers = (
        {"Retry-After": "5"}
        if isinstance(exc, engine_errors.RedisBehind | engine_errors.RedisUnverified)
        else {"Retry-After": "1"}
        if isinstance(exc, engine_errors.NotReplicated | engine_errors.CartTimeout)
        else None
    )
    return ApiError(status, exc.code, str(exc), details, headers)
