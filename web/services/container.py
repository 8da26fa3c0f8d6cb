"""The app's clients, opened by the app factory's lifespan and handed to the services.

The factory stores them at `app.state.services`; an endpoint finds them with `services()`.
Nothing here imports from web.app: the app module sits on top and passes them down.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine as DatabaseEngine
from starlette.requests import Request

from engine.engine import Engine
from engine.settings import Settings
from persistence.trigger import DrainTrigger


@dataclass
class Services:
    """What the endpoints use, opened by the lifespan and found at `request.app.state`."""

    settings: Settings
    engine: Engine
    db: DatabaseEngine
    trigger: DrainTrigger


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found
