"""A host application that mounts the dashboard under /forkq behind its own auth rule.

Run by tests/test_web_http.py as ``python -m uvicorn web_host_app:app`` (a real
server process).  The host decides who may see the dashboard: here, requests
that carry the header ``X-Staff: yes`` (a stand-in for "is a logged-in staff
user" of a real app).
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from forkq.web import create_app


def is_staff(request: Request) -> bool:
    return request.headers.get("x-staff") == "yes"


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("host app home\n")


dashboard = create_app(os.environ["FORKQ_REDIS_URL"], os.environ.get("FORKQ_NAMESPACE", "forkq"),
                       authorize=is_staff)
app = Starlette(routes=[Route("/", home), Mount("/forkq", app=dashboard)])
