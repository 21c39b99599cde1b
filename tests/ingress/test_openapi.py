"""The OpenAPI document validates and describes every route the app serves."""

from __future__ import annotations

import json

import pytest
from falcon import inspect, testing
from openapi_spec_validator import validate

from offload.wiring import Runtime
from store.errors import StoreError, StoreUnavailable
from tests.support.jobs import TEST_REGISTRY
from tests.support.webhooks import encode, payload, signed


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


def test_every_error_the_webhook_answers_is_documented_on_its_status_with_its_code(
    client: testing.TestClient, web_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = client.simulate_get("/openapi.json").json
    url = "/api/webhooks/email"

    def assert_documented(result: testing.Result) -> None:
        code = result.json["error"]["code"]
        responses = doc["paths"][url]["post"]["responses"]
        assert str(result.status_code) in responses, (result.status_code, code)
        assert code in responses[str(result.status_code)]["description"], (result.status_code, code)

    good = encode(payload("evt-doc"))
    bad_length = testing.create_environ(path=url, method="POST", body=good, headers=signed(good))
    bad_length["CONTENT_LENGTH"] = "ten"
    results = [
        client.simulate_post(url, body=b"{", headers=signed(b"{")),
        client.simulate_post(url, body=good, headers={}),
        client.simulate_post(url, body=b"{}", headers=signed(b"{}")),
        client.simulate_post(url, body=b"x" * (web_runtime.settings.webhook_body_cap_bytes + 1)),
    ]
    for result in results:
        assert_documented(result)
    answer: dict[str, str] = {}
    body = b"".join(client.app(bad_length, lambda status, headers: answer.update(status=status)))
    assert answer["status"].startswith("400 ") and json.loads(body)["error"]["code"] == "bad_request"
    assert "bad_request" in doc["paths"][url]["post"]["responses"]["400"]["description"]
    for error in (StoreError("value too long"), StoreUnavailable("connection refused")):

        def refuse(*args: object, error: Exception = error, **kwargs: object) -> None:
            raise error

        monkeypatch.setattr(web_runtime.webhook_store, "store", refuse)
        assert_documented(client.simulate_post(url, body=good, headers=signed(good)))
