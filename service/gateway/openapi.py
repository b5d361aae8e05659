"""The OpenAPI spec, completed to say exactly what the gateway enforces.

FastAPI's generated spec is the start; to it come the schemas of bodies the routes read by hand (the
JSON job request) and of the error body (`Problem`); every 422 becomes a Problem (also the ones FastAPI
adds to routes with parameters, whichever module they are in); optional header and query parameters
lose the `null` a request cannot send; and the running settings go in: an announced upload's maximum
size, and, on a gateway without API keys, no security requirement (nor 401) at all.
"""

from __future__ import annotations

from typing import Any

from service.gateway import problems
from service.gateway.routes import jobs
from service.settings import Settings


def complete_spec(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """`schema` (FastAPI's) completed in place, and returned."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, model_schema in {**jobs.extra_schemas(), **problems.component_schemas()}.items():
        components.setdefault(name, model_schema)
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    open_gateway = not settings.api_keys
    if open_gateway:
        schema["components"].pop("securitySchemes", None)
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            answers = operation.get("responses", {})
            if "422" in answers:
                answers["422"] = problems.responses(422)[422]
            if open_gateway:
                operation.pop("security", None)
                answers.pop("401", None)
            for parameter in operation.get("parameters", []):
                _drop_null(parameter)
    size = components["UploadRequest"]["properties"]["size_bytes"]
    for branch in size.get("anyOf", [size]):
        if branch.get("type") == "integer":
            branch["maximum"] = settings.max_input_bytes
    return schema


def _drop_null(parameter: dict[str, Any]) -> None:
    """An optional header or query parameter is absent or a string, never null."""
    schema = parameter.get("schema", {})
    branches = schema.get("anyOf")
    if parameter.get("in") in ("header", "query") and branches:
        kept = [branch for branch in branches if branch.get("type") != "null"]
        if len(kept) == 1:
            del schema["anyOf"]
            schema.update(kept[0])
