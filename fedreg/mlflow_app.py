"""fedreg's app for MLflow's tracking server: MLflow's own server, plus one page, ``/fedreg/open``.

MLflow's UI keeps the choice between its GenAI and model-training modes in the browser
(``localStorage["mlflow.workflowType_v1"]``) and falls back to GenAI: a link with ``workflowType=
machine_learning`` opens in model-training mode, but the run pages it links to do not carry the parameter and
open in GenAI mode (Traces, Evaluations, "No metrics recorded"). ``/fedreg/open?to=<route>`` is served from
MLflow's own origin, so it can record model-training mode as the browser's choice (MLflow's switch records the
same when clicked), mark the MLflow assistant's first-load pop-up as already shown (it would cover a third of
the comparison), and send the browser on to ``#<route>``, a page of MLflow's UI.

Registered as the MLflow server app ``fedreg`` (entry-point group ``mlflow.app``, as MLflow's own
``basic-auth``), which ``fedreg ui`` runs with ``mlflow ui --app-name fedreg``. Kept light: the server imports
it, not torch.
"""

from __future__ import annotations

import html
import json
import os
from urllib.parse import quote

#: the page's path on the server
OPEN_PATH = "/fedreg/open"

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>fedreg: opening MLflow</title></head>
<body><p>Opening <a href="{href}">the comparison in MLflow</a>...</p><script>
try {{
  localStorage.setItem("mlflow.workflowType_v1", JSON.stringify("machine_learning"));
  localStorage.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true");
}} catch (e) {{}}
location.replace({target});
</script></body></html>
"""


def open_url(base: str, route: str) -> str:
    """The link that opens MLflow's page ``#<route>`` through ``/fedreg/open``."""
    return f"{base}{OPEN_PATH}?to={quote(route, safe='')}"


def open_page(route: str) -> tuple[str, int]:
    """The page that records model-training mode and goes on to ``#<route>`` (a route of MLflow's UI:
    ``/experiments/...``; anything else goes to the experiments list)."""
    if not route.startswith("/experiments") or "//" in route:
        route = "/experiments"
    target = "/#" + route
    return _PAGE.format(href=html.escape(target), target=json.dumps(target)), 200


def create_app(app=None):
    """MLflow's server app with ``/fedreg/open`` added: its Flask app, wrapped in MLflow's FastAPI app when
    the server runs under uvicorn (as MLflow's ``basic-auth`` app does)."""
    from flask import request

    if app is None:
        from mlflow.server import app as mlflow_app

        app = mlflow_app

    def fedreg_open():
        body, status = open_page(request.args.get("to", "/experiments"))
        return body, status, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}

    if "fedreg_open" not in app.view_functions:
        app.add_url_rule(OPEN_PATH, "fedreg_open", fedreg_open, methods=["GET"])
    if os.environ.get("_MLFLOW_SGI_NAME") == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
