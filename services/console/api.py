"""The console's own JSON routes: only the shared ones (/healthz, /readyz, /metrics, /openapi.json,
/v1/keys); everything a person does goes through pages (services/console/pages/)."""

from __future__ import annotations

from shared.http.api import Api

api = Api("console")
