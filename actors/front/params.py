"""Request parameters of the OpenAI endpoints: one table of fields per endpoint, and the sampling parameters.

Every endpoint's accepted top-level fields are the keys of its table (CHAT, COMPLETIONS; /v1/responses builds
its own from the same checkers). The tables are the single source of truth: `parse_body` accepts exactly
them, and tests/test_openapi.py checks docs/openapi.yaml against them, so the documented API and the
validated API cannot drift apart.

A checker takes (value, param path) and returns the normalized value or raises a 400 APIError whose `param`
names the offending field (OpenAI clients show it). An explicit JSON null means "not given", as in OpenAI's
API. Unknown fields are refused (400), as OpenAI does: a misspelled `max_token` silently ignored would be a
worse failure than an error.

Every field of the installed openai SDK's request types is in a table (tests/test_sdk_fields.py derives the
lists from the SDK): implemented, or accepted with no effect where that is what it means for a self-hosted
model (`no_effect`: service tiers, safety identifiers, prompt-cache retention, ...), or refused with a 400
naming it only when it asks for what this server cannot do (`refused`: audio output, web search, ...).
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import APIError

if TYPE_CHECKING:
    from .actor import Front

Check = Callable[[Any, str], Any]

MAX_N = 16  # each choice is a full generation holding a batch slot; the latency profile runs 16 at once
MAX_STOP = 4  # OpenAI's limit
MAX_TOOLS = 128  # OpenAI's limit
MAX_TOP_LOGPROBS = 20  # the ranks' wire contract (logprobs: top-N 0..20)
MAX_PROMPTS = 64  # /v1/completions prompts per request
MAX_LOGIT_BIAS = 300  # OpenAI's limit on logit_bias entries
MAX_METADATA = 16  # OpenAI's limit on metadata pairs
INT64 = (-(2**63), 2**63 - 1)
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's function/schema name rule; safe inside a harmony header
EFFORTS = ("low", "medium", "high")  # harmony's reasoning levels


def invalid(param: str, what: str) -> APIError:
    return APIError(400, f"'{param}' {what}", "invalid_value", param)


# ---- checkers ---------------------------------------------------------------------------------------------

def boolean(v: Any, p: str) -> bool:
    if not isinstance(v, bool):
        raise invalid(p, "must be a boolean")
    return v


def integer(lo: int, hi: int) -> Check:
    def check(v: Any, p: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise invalid(p, f"must be an integer between {lo} and {hi}")
        return v
    return check


def number(lo: float, hi: float, lo_open: bool = False) -> Check:
    def check(v: Any, p: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or not lo <= v <= hi or (lo_open and v == lo):
            raise invalid(p, f"must be a number {'>' if lo_open else '>='} {lo} and <= {hi}")
        return float(v)
    return check


def string(max_len: int = 1 << 20, pattern: re.Pattern | None = None) -> Check:
    def check(v: Any, p: str) -> str:
        if not isinstance(v, str) or len(v) > max_len:
            raise invalid(p, f"must be a string of at most {max_len} characters")
        if pattern is not None and not pattern.match(v):
            raise invalid(p, f"must match {pattern.pattern}")
        return v
    return check


def one_of(*values: str) -> Check:
    def check(v: Any, p: str) -> str:
        if v not in values:
            raise invalid(p, f"must be one of {list(values)}")
        return v
    return check


def obj(v: Any, p: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise invalid(p, "must be an object")
    return v


def array(v: Any, p: str, lo: int, hi: int) -> list[Any]:
    if not isinstance(v, list) or not lo <= len(v) <= hi:
        raise invalid(p, f"must be an array of {lo} to {hi} items")
    return v


def fields(v: Any, p: str, spec: dict[str, Check], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A nested object with known keys: unknown keys refused, nulls dropped, required keys enforced."""
    out = {}
    for k, x in obj(v, p).items():
        if k not in spec:
            raise invalid(f"{p}.{k}", "is not a recognized field")
        if x is not None:
            out[k] = spec[k](x, f"{p}.{k}")
    for k in required:
        if k not in out:
            raise invalid(f"{p}.{k}", "is required")
    return out


def no_effect(v: Any, p: str) -> Any:
    """Accepted and documented as doing nothing here (e.g. `service_tier`: one self-hosted tier)."""
    return v


def refused(what: str) -> Check:
    """A field that asks for something this server cannot do: any non-null value is a 400 naming it."""
    def check(v: Any, p: str) -> Any:
        raise APIError(400, f"'{p}' is not supported by this server: {what}", "unsupported_parameter", p)
    return check


def metadata(v: Any, p: str) -> dict[str, str]:
    if len(obj(v, p)) > MAX_METADATA:
        raise invalid(p, f"must have at most {MAX_METADATA} pairs")
    return {string(64)(k, f"{p}.{k}"): string(512)(x, f"{p}.{k}") for k, x in v.items()}


def logit_bias(v: Any, p: str) -> dict[int, float]:
    """{"token id": bias -100..100}; the ids are checked against the vocabulary with the model (parse_body)."""
    if len(obj(v, p)) > MAX_LOGIT_BIAS:
        raise invalid(p, f"must have at most {MAX_LOGIT_BIAS} entries")
    out = {}
    for k, x in v.items():
        if not k.isdigit():
            raise invalid(f"{p}.{k}", "must be keyed by a token id")
        out[int(k)] = number(-100, 100)(x, f"{p}.{k}")
    return out


def modalities(v: Any, p: str) -> list[str]:
    items = array(v, p, 0, 2)
    if "audio" in items:
        raise refused("audio output; this model writes text only")(v, p)
    if any(m != "text" for m in items):
        raise invalid(p, "must be [\"text\"]")
    return items


def stop(v: Any, p: str) -> list[str]:
    items = [v] if isinstance(v, str) else array(v, p, 0, MAX_STOP)
    if not all(isinstance(s, str) and 0 < len(s) <= 256 for s in items):
        raise invalid(p, f"must be a string or an array of up to {MAX_STOP} non-empty strings")
    return items


def stream_options(v: Any, p: str) -> dict[str, Any]:
    # include_obfuscation: no effect (no random padding is added to stream events)
    return fields(v, p, {"include_usage": boolean, "include_obfuscation": boolean})


def text_content(v: Any, p: str) -> str:
    """Message content: a string or an array of text parts (the model reads text only), joined. An assistant's
    `refusal` parts (what an earlier answer refused) are text too."""
    if isinstance(v, str):
        return v
    parts = array(v, p, 0, 4096)
    texts = []
    for i, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        key = {"text": "text", "refusal": "refusal"}.get(kind or "")
        if key is None or not isinstance(part.get(key), str):
            raise invalid(f"{p}[{i}]", "must be a text part {\"type\": \"text\", \"text\": ...}; "
                                       "this model reads text only")
        texts.append(part[key])
    return "".join(texts)


def tool_call(v: Any, p: str) -> dict[str, Any]:
    call = fields(v, p, {"id": string(256), "type": one_of("function"),
                         "function": lambda f, q: fields(f, q, {"name": string(64, NAME), "arguments": string()},
                                                        ("name", "arguments"))},
                  ("id", "function"))
    return {**call, "type": "function"}


ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_FUNCTION_CALL = {"name": string(64, NAME), "arguments": string()}
_MESSAGE = {
    "role": one_of(*ROLES), "content": text_content, "name": string(256), "tool_call_id": string(256),
    "tool_calls": lambda v, p: [tool_call(c, f"{p}[{i}]") for i, c in enumerate(array(v, p, 0, MAX_TOOLS))],
    # the legacy single call of an assistant message (functions API): rendered as a tool call
    "function_call": lambda v, p: fields(v, p, _FUNCTION_CALL, ("name", "arguments")),
    # What this server returned earlier, sent back by clients; the template keeps it where harmony says so.
    "reasoning_content": string(), "reasoning": string(),
    # Other fields of the assistant message object clients echo back; accepted, not rendered.
    "refusal": no_effect, "annotations": no_effect, "audio": no_effect,
}


def messages(v: Any, p: str) -> list[dict[str, Any]]:
    """Chat messages, with the legacy functions API's shapes mapped onto tool calls: an assistant
    `function_call` is a tool call whose id is the function's name, a `function` message its result."""
    out = []
    for i, raw in enumerate(array(v, p, 1, 100_000)):
        q = f"{p}[{i}]"
        m = fields(raw, q, _MESSAGE, ("role",))
        role = m["role"]
        if "function_call" in m:
            if role != "assistant":
                raise invalid(f"{q}.function_call", "is only allowed on assistant messages")
            fc = m.pop("function_call")
            m.setdefault("tool_calls", []).append({"id": fc["name"], "type": "function", "function": fc})
        if role == "function":
            if "name" not in m:
                raise invalid(f"{q}.name", "is required for a function message")
            m = {**m, "role": "tool", "tool_call_id": m["name"]}
        if "content" not in m and not (role == "assistant" and m.get("tool_calls")):
            raise invalid(f"{q}.content", "is required")
        if m["role"] == "tool" and "tool_call_id" not in m:
            raise invalid(f"{q}.tool_call_id", "is required for a tool message")
        if role != "assistant" and "tool_calls" in m:
            raise invalid(f"{q}.tool_calls", "is only allowed on assistant messages")
        out.append({**m, "content": m.get("content", "")})
    return out


_FUNCTION = {"name": string(64, NAME), "description": string(), "parameters": obj, "strict": boolean}


def tools(v: Any, p: str) -> list[dict[str, Any]]:
    out = [fields(t, f"{p}[{i}]", {"type": one_of("function"),
                                   "function": lambda f, q: fields(f, q, _FUNCTION, ("name",))}, ("type", "function"))
           for i, t in enumerate(array(v, p, 0, MAX_TOOLS))]
    names = [t["function"]["name"] for t in out]
    if len(set(names)) != len(names):
        raise invalid(p, "must not name a function twice")
    return out


def tool_choice(v: Any, p: str) -> str | dict[str, Any]:
    if isinstance(v, str):
        return one_of("none", "auto", "required")(v, p)
    return fields(v, p, {"type": one_of("function"),
                         "function": lambda f, q: fields(f, q, {"name": string(64, NAME)}, ("name",))},
                  ("type", "function"))


def functions(v: Any, p: str) -> list[dict[str, Any]]:
    """The legacy `functions` list, as `tools`."""
    return tools([{"type": "function", "function": f} for f in array(v, p, 0, MAX_TOOLS)], p)


def function_call(v: Any, p: str) -> str | dict[str, Any]:
    """The legacy `function_call` ("none" | "auto" | {"name": N}), as a `tool_choice`."""
    if isinstance(v, str):
        return one_of("none", "auto")(v, p)
    return {"type": "function", "function": fields(v, p, {"name": string(64, NAME)}, ("name",))}


def response_format(v: Any, p: str) -> dict[str, Any]:
    rf = fields(v, p, {"type": one_of("text", "json_object", "json_schema"),
                       "json_schema": lambda s, q: fields(s, q, {"name": string(64, NAME), "description": string(),
                                                                 "schema": obj, "strict": boolean}, ("name",))},
                ("type",))
    if (rf["type"] == "json_schema") != ("json_schema" in rf):
        raise invalid(f"{p}.json_schema", "is required with type json_schema and only allowed with it")
    return rf


def prompt(v: Any, p: str) -> list[str | list[int]]:
    """/v1/completions prompt: a string, an array of strings, an array of token ids, or an array of those."""
    if isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(t, int) for t in v)):
        v = [v]
    items = array(v, p, 1, MAX_PROMPTS)
    for i, item in enumerate(items):
        ok = (isinstance(item, str) and item) or (isinstance(item, list) and item and all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in item))
        if not ok:
            raise invalid(f"{p}[{i}]" if len(items) > 1 else p,
                          "must be a non-empty string or a non-empty array of token ids")
    return items


# ---- the tables -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Table:
    fields: dict[str, Check]
    required: tuple[str, ...] = ()


# Generation fields every endpoint shares. max_tokens' upper bound is the context (checked with the prompt).
SAMPLING: dict[str, Check] = {
    "logit_bias": logit_bias,
    "max_tokens": integer(1, 1 << 30),
    "temperature": number(0, 2),
    "top_p": number(0, 1, lo_open=True),
    "stop": stop,
    "seed": integer(*INT64),
    "n": integer(1, MAX_N),
    "frequency_penalty": number(-2, 2),
    "presence_penalty": number(-2, 2),
    "stream": boolean,
    "stream_options": stream_options,
    "user": string(512),  # an end-user id for abuse tracking; logged nowhere, accepted for compatibility
    # Extensions as in vLLM: top_k (0 = off) and ignore_eos (fixed-length generations for benchmarks).
    "top_k": integer(0, 1 << 20),
    "ignore_eos": boolean,
}

# Fields of OpenAI's hosted service that mean nothing for one self-hosted model: accepted, no effect.
HOSTED: dict[str, Check] = {
    "prompt_cache_key": string(1024),  # also a session key for routing (the front's session plumbing)
    "prompt_cache_retention": one_of("in_memory", "24h"),  # the prefix cache keeps what memory allows
    "prompt_cache_options": no_effect,
    "safety_identifier": string(512),
    "service_tier": string(64),  # one tier here
    "moderation": refused("moderation; no moderation model runs here"),
}

CHAT = Table({
    "model": string(256), "messages": messages, **SAMPLING, **HOSTED,
    "max_completion_tokens": integer(1, 1 << 30),
    "tools": tools, "tool_choice": tool_choice, "parallel_tool_calls": boolean,
    "functions": functions, "function_call": function_call,
    "response_format": response_format, "reasoning_effort": one_of(*EFFORTS),
    "logprobs": boolean, "top_logprobs": integer(0, MAX_TOP_LOGPROBS),
    "metadata": metadata, "store": boolean,  # no effect on chat: completions are not stored here
    "verbosity": one_of("low", "medium", "high"),  # no effect: GPT-OSS has no verbosity control
    "prediction": obj,  # no effect: predicted outputs only speed up a hosted model; the output is the same
    "modalities": modalities,
    "audio": refused("audio output; this model writes text only"),
    "web_search_options": refused("web search; no browsing tool runs here"),
}, ("model", "messages"))

COMPLETIONS = Table({
    "model": string(256), "prompt": prompt, **SAMPLING,
    "logprobs": integer(0, MAX_TOP_LOGPROBS), "echo": boolean,
    "best_of": integer(1, MAX_N),  # checked with n (parse_body): only best_of == n, as no choice is ranked
    "suffix": lambda v, p: v if v == "" else refused("insertion; GPT-OSS completes text, it does not infill")(v, p),
}, ("model", "prompt"))


def read_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", "invalid_json") from None


def parse_body(front: Front, raw: bytes, table: Table) -> dict[str, Any]:
    """Decode and check a request body against its table; the model must be the one this server serves."""
    body = read_json(raw)
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object", "invalid_json")
    out: dict[str, Any] = {}
    for k, v in body.items():
        if k not in table.fields:
            raise APIError(400, f"unrecognized request argument supplied: {k}", "unknown_parameter", k)
        if v is not None:
            out[k] = table.fields[k](v, k)
    for k in table.required:
        if k not in out:
            raise invalid(k, "is required")
    if out["model"] not in (front.model_id, front.cfg["model"]):
        raise APIError(404, f"model {out['model']!r} does not exist; this server serves {front.model_id!r}",
                       "model_not_found", "model")
    if "stream_options" in out and not out.get("stream"):
        raise invalid("stream_options", "is only allowed when 'stream' is true")
    if out.get("logit_bias") and max(out["logit_bias"]) >= len(front.tokenizer):
        raise invalid("logit_bias", f"names a token id outside the vocabulary of {len(front.tokenizer)} tokens")
    if out.get("best_of", out.get("n", 1)) != out.get("n", 1):
        raise invalid("best_of", "must equal 'n': this server does not rank extra choices")
    return out


# ---- sampling ---------------------------------------------------------------------------------------------

@dataclass
class Sampling:
    """What generating a request needs beyond its prompt: the rank params and the front's own duties."""
    n: int = 1
    stop: list[str] = field(default_factory=list)  # matched on the decoded text, on the front
    logprobs: int | None = None  # top-N alternatives per token; None = no logprobs
    max_tokens: int | None = None  # None: fill the context up to the default
    wire: dict[str, Any] = field(default_factory=dict)  # temperature, top_p, seed, penalties, ... for the rank

    @property
    def deterministic(self) -> bool:
        """Greedy or seeded: the same request gives the same answer, so it may be served from the cache."""
        return self.wire["temperature"] == 0 or self.wire["seed"] is not None

    def params(self, front: Front, prompt_len: int, i: int, param: str) -> dict[str, Any]:
        """The generate params of choice i for a prompt of prompt_len tokens; a prompt that leaves no room in
        the context is a 400 naming both counts (`param` names the field that carried the prompt)."""
        max_len = int(front.cfg["engine"]["max_model_len"])
        max_tokens = self.max_tokens
        if max_tokens is None:
            max_tokens = min(int(front.cfg["engine"]["default_max_tokens"]), max(1, max_len - prompt_len))
        if prompt_len + max_tokens > max_len:
            raise APIError(400, f"this model's maximum context length is {max_len} tokens; the {param} use "
                                f"{prompt_len} tokens and {max_tokens} more were requested for the completion",
                           "context_length_exceeded", param)
        seed = self.wire.get("seed")
        # n seeded choices must differ from each other yet each stay reproducible: choice i uses seed + i
        seed = None if seed is None else (seed + i - INT64[0]) % 2**64 + INT64[0]
        return {**self.wire, "max_tokens": max_tokens, "seed": seed, "logprobs": self.logprobs}


WIRE_FIELDS = ("temperature", "top_p", "top_k", "seed", "frequency_penalty", "presence_penalty", "ignore_eos")


def sampling(body: dict[str, Any], logprobs: int | None, max_tokens: int | None = None) -> Sampling:
    """Sampling from a checked body; the caller resolves its endpoint's logprobs and max-tokens fields."""
    wire = {"temperature": 1.0, "top_p": 1.0, "seed": None, **{k: body[k] for k in WIRE_FIELDS if k in body}}
    if body.get("logit_bias"):
        wire["logit_bias"] = [[t, b] for t, b in sorted(body["logit_bias"].items())]
    return Sampling(n=body.get("n", 1), stop=body.get("stop", []), logprobs=logprobs,
                    max_tokens=max_tokens if max_tokens is not None else body.get("max_tokens"), wire=wire)
