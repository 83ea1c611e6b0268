"""The Airflow plugin: the Renkei FastAPI app under /renkei and its nav entries (PAGES).

Every Airflow component loads plugins, so this module imports nothing but Airflow's plugin
base class; the app itself (FastAPI, Jinja2, SQLAlchemy, the warehouse) is built on the
api-server's first request to /renkei.
"""

from __future__ import annotations

import threading
from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/renkei"
PAGES = (  # (url_route, path under URL_PREFIX, nav label)
    ("renkei-runs", "runs", "Renkei 取込状況 (runs)"),
    ("renkei-quarantine", "quarantine", "Renkei 隔離 (quarantine)"),
    ("renkei-review", "review", "Renkei 紐付け点検 (review)"),
    ("renkei-notices", "notices", "Renkei 通知 (notices)"),
    ("renkei-trends", "trends", "Renkei 傾向 (trends)"),
)


class LazyApp:
    """An ASGI app that builds ``renkei.ui.app.create_app()`` when the first request arrives."""

    def __init__(self) -> None:
        self._app: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    from renkei.ui.app import create_app  # noqa: PLC0415 - deferred on purpose

                    self._app = create_app()
        return self._app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self._get()(scope, receive, send)


class RenkeiPlugin(AirflowPlugin):
    """Registers the Renkei pages (see docs/UI.md for what each shows and who may use it)."""

    name = "renkei"
    fastapi_apps = [{"app": LazyApp(), "url_prefix": URL_PREFIX, "name": "Renkei"}]
    # Relative hrefs: the UI's <base href> is the API base URL, so they also work under a prefix.
    external_views = [
        {"name": label, "href": f"{URL_PREFIX.lstrip('/')}/{path}", "url_route": route,
         "destination": "nav", "category": "Renkei"}
        for route, path, label in PAGES
    ]
