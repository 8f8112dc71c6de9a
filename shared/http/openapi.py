"""/openapi.json generated from the declared routes and their pydantic models."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from shared.http.api import Api, Route

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "problem": {"type": "string"}},
            },
        },
    },
}
REF = "#/components/schemas/{model}"
# One server-sent event as a client library parses it; `data` is a JSON document.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "event": {"type": "string"}, "data": {"type": "string"}},
}


class _Schemas:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {"Problem": PROBLEM_SCHEMA}

    def ref(self, model: type[BaseModel], mode: str) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
        self.components.update(schema.pop("$defs", {}))
        name = model.__name__
        self.components[name] = schema
        return {"$ref": REF.format(model=name)}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def _operation(api: Api, route: Route, schemas: _Schemas) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": api.path_schema(name)}
        for name in re.findall(r"{(\w+)}", route.path)
    ]
    if route.query is not None:
        query_schema = route.query.model_json_schema(ref_template=REF)
        schemas.components.update(query_schema.pop("$defs", {}))
        required = set(query_schema.get("required", []))
        for name, prop in query_schema.get("properties", {}).items():
            param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if prop.get("type") == "array":
                param.update(style="form", explode=True)
            parameters.append(param)
    if route.idempotent:
        parameters.append({
            "name": "Idempotency-Key", "in": "header", "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": 200},
        })
    op: dict[str, Any] = {"operationId": route.name, "summary": route.summary, "parameters": parameters}
    if route.body is not None:
        content = {"application/json": {"schema": schemas.ref(route.body, "validation")}}
        for raw in (*route.raw_body_types, *(route.streamed_body.types if route.streamed_body else ())):
            content[raw] = {"schema": {"type": "string"}}
        op["requestBody"] = {"required": True, "content": content}
    ok: dict[str, Any] = {"description": "success"}
    if route.produces == "text/event-stream":
        ok["content"] = {route.produces: {"schema": SSE_EVENT_SCHEMA}}
    elif route.produces != "application/json":
        ok["content"] = {route.produces: {"schema": {"type": "string"}}}
    elif route.response is not None:
        ok["content"] = {"application/json": {"schema": schemas.ref(route.response, "serialization")}}
    else:
        ok["content"] = {"application/json": {"schema": {"type": "object"}}}
    responses: dict[str, Any] = {str(status): ok for status in (route.status, *route.also)}
    if route.accepted is not None:
        responses["202"] = {"description": "accepted: still at work; Retry-After, and Location of the status",
                            "content": {"application/json": {"schema": schemas.ref(route.accepted, "serialization")}}}
    if not route.public:
        responses["401"] = _problem("missing or unknown API key")
        responses["403"] = _problem("the key's role may not do this")
        responses["429"] = _problem("this key's request rate (Retry-After says when to retry)"
                                    + (" or live streams" if route.streaming else "") + " exceeded")
    if route.body is not None or route.query is not None or "{" in route.path:
        responses["422"] = _problem("invalid input, naming the field")
    if route.body is not None:
        responses["400"] = _problem("malformed JSON or missing Idempotency-Key")
        responses["408"] = _problem("the body did not arrive in time (OMNISTOCK_BODY_TIMEOUT_S)")
        responses["413"] = _problem("body too large")
        responses["415"] = _problem("unsupported content type")
    for status, description in route.extra_responses.items():
        responses[str(status)] = _problem(description)
    responses["503"] = _problem("database unavailable")
    op["responses"] = responses
    if not route.public:
        op["security"] = [{"apiKey": []}]
    return op


def build_openapi(api: Api, version: str = "0.1.0") -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, Any] = {}
    for route in api.routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(api, route, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": f"omnistock {api.service}", "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }
