"""The API described: `GET /openapi.json` (OpenAPI 3.1, built by web/openapi/document.py from the
operations table and the limits the server's settings set) and `GET /api/docs/`, a Swagger UI
page.

The page works offline: its script, stylesheet and icons are the files the
swagger-ui-bundle-v2 package ships (Swagger UI 5, which reads OpenAPI 3.1; imported as
`swagger_ui_bundle`), served by this app from `/api/docs/static/`; nothing comes from
another host.
"""

from __future__ import annotations

import functools
from importlib import metadata
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]  # no py.typed

from engine.settings import Settings
from web.errors import ApiError
from web.openapi import catalog as openapi_catalog
from web.openapi import dashboard as openapi_dashboard
from web.openapi import document as openapi
from web.openapi import orders as openapi_orders
from web.openapi.conventions import TITLE
from web.services.container import services

STATIC = "/api/docs/static/"
# The files of the bundle the page uses, and their media types.
ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
# Starts Swagger UI (a file, not an inline script, so a strict Content-Security-Policy holds).
INIT_JS = """\
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
"""
PAGE = f"""\
<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{TITLE}: API</title>
  <link rel="stylesheet" href="{STATIC}swagger-ui.css">
  <link rel="icon" type="image/png" href="{STATIC}favicon-32x32.png" sizes="32x32">
  <link rel="icon" type="image/png" href="{STATIC}favicon-16x16.png" sizes="16x16">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{STATIC}swagger-ui-bundle.js"></script>
  <script src="{STATIC}init.js"></script>
</body>
</html>
"""
OPERATIONS = [
    *openapi_catalog.OPERATIONS,
    *openapi_orders.OPERATIONS,
    *openapi_dashboard.OPERATIONS,
]


def _version() -> str:
    try:
        return metadata.version("inventory-reservation-engine")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@functools.cache
def document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI document (built once per settings: it states the configured limits)."""
    schemas = {
        **openapi_catalog.SCHEMAS,
        **openapi_catalog.configured(settings),
        **openapi_orders.configured(settings),
    }
    return openapi.build(OPERATIONS, schemas=schemas, version=_version())


async def openapi_json(request: Request) -> Response:
    """The OpenAPI document, as is (no envelope: tools read it)."""
    return JSONResponse(document(services(request).settings))


async def api_docs(request: Request) -> Response:
    """The API page."""
    return HTMLResponse(PAGE)


async def asset(request: Request) -> Response:
    """A file of the page: Swagger UI's, or its initializer."""
    name = request.path_params["name"]
    headers = {"Cache-Control": "public, max-age=3600"}
    if name == "init.js":
        return Response(INIT_JS, media_type="text/javascript; charset=utf-8", headers=headers)
    if name not in ASSETS:
        raise ApiError(404, "not_found", "no such file")
    path = Path(str(swagger_ui_path)) / name
    return FileResponse(path, media_type=ASSETS[name], headers=headers)


routes: list[BaseRoute] = [
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/api/docs/", api_docs, methods=["GET"]),
    # The page's files are not operations of the API: left out of the document.
    Route(STATIC + "{name}", asset, methods=["GET"], include_in_schema=False),
]
