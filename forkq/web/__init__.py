"""forkq's own dashboard (``forkq web``), an optional extra: ``pip install 'forkq[web]'``.

``create_app(redis, namespace, ...)`` returns a Starlette (ASGI) application.
Standalone: ``forkq web --bind 127.0.0.1:7070``.  Inside your own web app (behind
your auth), mount it under a prefix; see docs/OPERATIONS.md for FastAPI /
Starlette, Django and Flask.

This package imports its web dependencies lazily, so ``forkq.web.queries`` (and
``forkq web``'s one-line error when the extra is missing) work without them.
"""

from __future__ import annotations

from typing import Any

MISSING_EXTRA = ("the dashboard needs the 'web' extra: pip install 'forkq[web]' "
                 "(Starlette, Jinja2, uvicorn, prometheus_client)")


def create_app(*args: Any, **kwargs: Any) -> Any:
    """See ``forkq.web.app.create_app`` (imported on first use)."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["MISSING_EXTRA", "create_app"]
