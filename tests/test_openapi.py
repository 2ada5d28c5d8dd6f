"""docs/openapi.yaml against the server: the request schemas and the parameter tables (actors/front/params.py)
must describe the same API, checked both ways and in-process (no tree needed).

- Field sets: every schema property is a table field and every table field is a schema property.
- Behaviour: for every property, a fixed set of probe values (plus an example generated from the schema) is
  run through the server's own parse_body and through a small JSON Schema evaluator; both must agree on
  which values are valid. A refused value must name its field in `param`.
- Routes: the /v1 paths and methods documented are the ones the aiohttp app serves.
"""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import yaml
from gptoss.actors.front import params, responses
from gptoss.actors.front.app import make_app
from gptoss.actors.front.errors import APIError

SPEC = yaml.safe_load((Path(__file__).parents[1] / "docs" / "openapi.yaml").read_text())
SCHEMAS = SPEC["components"]["schemas"]
FRONT = SimpleNamespace(model_id="gpt-oss-tiny", cfg={"model": "tiny"})
TABLES = {"ChatCompletionRequest": params.CHAT, "CompletionRequest": params.COMPLETIONS,
          "ResponsesRequest": responses.RESPONSES}
BASE = {"ChatCompletionRequest": {"model": "gpt-oss-tiny", "messages": [{"role": "user", "content": "hi"}]},
        "CompletionRequest": {"model": "gpt-oss-tiny", "prompt": "hi"},
        "ResponsesRequest": {"model": "gpt-oss-tiny", "input": "hi"}}
# Fields only valid next to another one (a cross-field rule of parse_body).
COMPANIONS = {"stream_options": {"stream": True}}
PROBES = [True, False, 0, 1, -1, 2.5, 21, 100, -3.0, "x", "", "none", "required", "low", [], ["x"], [1, 2],
          [[1], [2]], {}, {"type": "text"}, {"include_usage": True}, {"type": "json_object"},
          [{"role": "user", "content": "x"}], [{"type": "function", "function": {"name": "f"}}]]


def resolve(s: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in s:
        s = SCHEMAS[s["$ref"].rsplit("/", 1)[1]]
    return s


def json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}[type(v)]


def valid(v: Any, s: dict[str, Any]) -> bool:
    """The subset of JSON Schema (2020-12) that docs/openapi.yaml uses."""
    s = resolve(s)
    t = json_type(v)
    if "type" in s:
        types = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if t not in types and not (t == "integer" and "number" in types):
            return False
    checks = [
        "const" not in s or v == s["const"],
        "enum" not in s or v in s["enum"],
        "oneOf" not in s or sum(valid(v, x) for x in s["oneOf"]) == 1,
        "anyOf" not in s or any(valid(v, x) for x in s["anyOf"]),
        "allOf" not in s or all(valid(v, x) for x in s["allOf"]),
    ]
    if t in ("integer", "number"):
        checks += ["minimum" not in s or v >= s["minimum"], "maximum" not in s or v <= s["maximum"],
                   "exclusiveMinimum" not in s or v > s["exclusiveMinimum"]]
    elif t == "string":
        checks += [len(v) >= s.get("minLength", 0), len(v) <= s.get("maxLength", len(v)),
                   "pattern" not in s or re.search(s["pattern"], v) is not None]
    elif t == "array":
        checks += [len(v) >= s.get("minItems", 0), len(v) <= s.get("maxItems", len(v)),
                   "items" not in s or all(valid(x, s["items"]) for x in v)]
    elif t == "object":
        props = s.get("properties", {})
        extra = s.get("additionalProperties", True)
        checks += [all(k in v for k in s.get("required", [])),
                   all(valid(x, props[k]) if k in props else extra is not False and (extra is True or valid(x, extra))
                       for k, x in v.items())]
    return all(checks)


def example(s: dict[str, Any]) -> Any:
    """A valid value generated from the schema (its `examples` first)."""
    s = resolve(s)
    if "examples" in s:
        return s["examples"][0]
    if "const" in s:
        return s["const"]
    if "enum" in s:
        return s["enum"][0]
    for key in ("oneOf", "anyOf", "allOf"):
        if key in s:
            return example(s[key][0])
    t = s["type"][0] if isinstance(s.get("type"), list) else s.get("type")
    if t == "object":
        return {k: example(s["properties"][k]) for k in s.get("required", [])}
    if t == "array":
        return [example(s["items"])] * max(1, s.get("minItems", 0))
    if t in ("integer", "number"):
        return s.get("maximum", s.get("minimum", 1))
    return {"string": "x", "boolean": True}[t]


def accepted(schema: str, name: str, value: Any) -> bool:
    body = {**BASE[schema], **COMPANIONS.get(name, {}), name: value}
    try:
        params.parse_body(FRONT, orjson.dumps(body), TABLES[schema])
    except APIError as exc:
        assert exc.status == 400 and exc.param and exc.param.split(".")[0].split("[")[0] == name, exc.body()
        return False
    return True


@pytest.mark.parametrize("schema", sorted(TABLES))
def test_schema_fields_are_the_table_fields(schema):
    s = SCHEMAS[schema]
    assert set(s["properties"]) == set(TABLES[schema].fields)
    assert set(s["required"]) == set(TABLES[schema].required)
    assert s["additionalProperties"] is False  # the server refuses unknown fields


@pytest.mark.parametrize("schema,name", [(s, n) for s in sorted(TABLES) for n in SCHEMAS[s]["properties"]
                                         if n != "model"])  # model: any string validates, the server 404s
def test_server_and_schema_agree_on_values(schema, name):
    prop = SCHEMAS[schema]["properties"][name]
    ex = example(prop)
    assert valid(ex, prop), f"generated example {ex!r} is not valid for {name}"
    for value in [ex, *PROBES]:
        assert accepted(schema, name, value) == valid(value, prop), f"{schema}.{name} = {value!r}"


def test_unknown_field_is_refused_by_name():
    with pytest.raises(APIError) as info:
        params.parse_body(FRONT, orjson.dumps({**BASE["CompletionRequest"], "max_token": 5}), params.COMPLETIONS)
    assert info.value.status == 400 and info.value.param == "max_token"


def test_documented_routes_are_served():
    front = SimpleNamespace(cfg={"auth": {"api_key": None, "admin_key": None}, "http": {"max_body_bytes": 1024}})
    served = {(r.method, r.resource.canonical) for r in make_app(front).router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/v1/") and r.method != "HEAD"}
    documented = {(m.upper(), p) for p, ops in SPEC["paths"].items() for m in ops}
    assert documented == served
