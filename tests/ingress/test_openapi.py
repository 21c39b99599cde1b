"""The OpenAPI document validates and describes every route the app serves."""

from __future__ import annotations

from falcon import inspect, testing
from openapi_spec_validator import validate

from tests.support.jobs import TEST_REGISTRY


def test_the_openapi_document_validates_and_lists_every_route(client: testing.TestClient) -> None:
    result = client.simulate_get("/openapi.json")
    assert result.status_code == 200
    doc = result.json
    validate(doc)
    routes = {
        route.path: {m.method.lower() for m in route.methods if not m.internal}
        for route in inspect.inspect_routes(client.app)
    }
    described = {path: set(ops) for path, ops in doc["paths"].items()}
    assert described == routes
    cron = doc["paths"]["/api/cron/{job}"]["get"]
    assert cron["parameters"][0]["schema"]["enum"] == TEST_REGISTRY.names
    assert cron["security"] == [{"cronBearer": []}]
    webhook = doc["paths"]["/api/webhooks/email"]["post"]
    assert {"401", "413", "400", "422", "503", "202", "200"} <= set(webhook["responses"])
    for path in doc["paths"].values():
        for operation in path.values():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"
                    }
