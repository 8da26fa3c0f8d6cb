"""The app's clients, opened by the app factory's lifespan and handed to the services.

The factory stores them at `app.state.services`; an endpoint finds them with `services()`.
Nothing here imports from web.app: the app module sits on top and passes them down.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from engine.engine import Engine
from engine.settings import Settings
from persistence.trigger import DrainTrigger
from web.catalog_cache import CatalogCache
from web.live_stock import StockFeed


@dataclass
class Services:
    """What the endpoints use, opened by the lifespan and found at `request.app.state`."""

    settings: Settings
    engine: Engine
    db: DatabaseEngine
    trigger: DrainTrigger
    # The async path of the catalog reads (PostgreSQL; None: SQLite, read in threads), and
    # this process's cached catalog rows (web/services/catalog.py).
    adb: AsyncEngine | None = None
    catalog: CatalogCache = field(default_factory=CatalogCache)
    # live stock over Server-Sent Events: the process's one reader of the outboxes
    feed: StockFeed | None = None


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found
