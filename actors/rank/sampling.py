"""Per-request sampling parameters and the batched sampler.

One `Sampler` call turns a step's logits rows (one per request that gets a token this step) into token ids:
penalties, then greedy rows by one argmax, the other rows by temperature / top-k / top-p over a batched
sort and softmax. Each seeded request draws from its own torch.Generator, so it gives the same tokens
whatever else shares its batch; unseeded rows draw in one call.

Penalties follow OpenAI: logit[t] -= frequency_penalty * count(t) + presence_penalty * (count(t) > 0), over
the tokens the request generated so far (as vLLM). Counts live in a per-slot [slots, vocab] table,
allocated only once a penalized request shows up and rebuilt from the generated tokens on (re)admission.

logit_bias (OpenAI's: a per-request {token id: -100..100} added to the logits) comes before penalties; a row
without one costs nothing. A request with a grammar (structured outputs, grammar.py) has every token its
grammar forbids masked last, so no bias or penalty can bring one back; its matcher consumes the drawn token.

Logprobs (vLLM's default): from log_softmax of the raw logits (before bias, penalties and temperature), for
the chosen token and the top-N alternatives; computed only for the rows that asked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from . import grammar

MAX_LOGPROBS = 20
# one entry per generated token: [chosen token's logprob, [[token_id, logprob], ...top-N]]
TokenLogprobs = list


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: int | None = None  # number of top alternatives to return per token; None: no logprobs
    logit_bias: list[tuple[int, float]] = field(default_factory=list)
    grammar: str | None = None  # Lark text (grammar.py); the rank builds `matcher` from it on admission
    matcher: Any = None

    @classmethod
    def from_wire(cls, params: dict[str, Any], default_max_tokens: int) -> SamplingParams:
        """Build from the generate message's params map; the front validated ranges already, we re-check
        types so a bad frame from anywhere fails this one request, not the rank."""
        def get(key: str, default: Any) -> Any:  # an explicit null means the default too
            value = params.get(key)
            return default if value is None else value

        p = cls(
            max_tokens=int(params.get("max_tokens") or default_max_tokens),
            temperature=float(get("temperature", 1.0)),
            top_p=float(get("top_p", 1.0)),
            top_k=int(get("top_k", 0)),
            seed=None if params.get("seed") is None else int(params["seed"]),
            stop_token_ids=[int(t) for t in get("stop_token_ids", [])],
            ignore_eos=bool(get("ignore_eos", False)),
            frequency_penalty=float(get("frequency_penalty", 0.0)),
            presence_penalty=float(get("presence_penalty", 0.0)),
            logprobs=None if params.get("logprobs") is None else int(params["logprobs"]),
            logit_bias=[(int(t), float(b)) for t, b in get("logit_bias", [])],
            grammar=None if params.get("grammar") is None else str(params["grammar"]),
        )
        if (p.max_tokens < 1 or p.temperature < 0 or not 0 < p.top_p <= 1 or p.top_k < 0
                or not -2 <= p.frequency_penalty <= 2 or not -2 <= p.presence_penalty <= 2
                or (p.logprobs is not None and not 0 <= p.logprobs <= MAX_LOGPROBS)
                or any(t < 0 or not -100 <= b <= 100 for t, b in p.logit_bias)):
            raise ValueError(f"invalid sampling parameters {params}")
        return p

    @property
    def penalized(self) -> bool:
        return self.frequency_penalty != 0 or self.presence_penalty != 0

    def generator(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        g = torch.Generator()
        g.manual_seed(self.seed)
        return g


class Sampled(Protocol):
    """What the sampler needs of a request."""

    params: SamplingParams
    gen: torch.Generator | None
    slot: int | None


class Sampler:
    def __init__(self, slots: int, vocab: int, device: torch.device) -> None:
        self.slots, self.vocab, self.device = slots, vocab, device
        self.counts: torch.Tensor | None = None  # [slots, vocab] generated-token counts, for penalties

    def admit(self, slot: int, params: SamplingParams, generated: list[int]) -> None:
        """A request takes `slot`: start its penalty counts from the tokens it already generated."""
        if not params.penalized:
            return
        if self.counts is None:
            self.counts = torch.zeros((self.slots, self.vocab), dtype=torch.float32, device=self.device)
        row = self.counts[slot]
        row.zero_()
        if generated:
            ids = torch.tensor(generated, dtype=torch.long, device=self.device)
            row.index_add_(0, ids, torch.ones(len(generated), device=self.device))

    def __call__(self, logits: torch.Tensor, reqs: list[Sampled]) -> tuple[list[int], list[TokenLogprobs | None]]:
        """One token per row of `logits` [n, vocab] (row i belongs to reqs[i]) and, per row, its logprobs
        entry or None."""
        dev = logits.device
        raw = logits.float()
        x = raw
        biased = [i for i, r in enumerate(reqs) if r.params.logit_bias]
        if biased:
            x = raw.clone()
            for i in biased:  # an id past this model's vocabulary (the front checks its tokenizer's) is ignored
                ids, bias = zip(*[(t, b) for t, b in reqs[i].params.logit_bias if t < x.shape[1]] or [(0, 0.0)])
                x[i, torch.tensor(ids, device=dev)] += torch.tensor(bias, device=dev)
        pen = [i for i, r in enumerate(reqs) if r.params.penalized]
        if pen:
            rows = torch.tensor(pen, device=dev)
            slots = torch.tensor([reqs[i].slot for i in pen], device=dev)
            c = self.counts[slots]
            fp = torch.tensor([reqs[i].params.frequency_penalty for i in pen], device=dev)[:, None]
            pp = torch.tensor([reqs[i].params.presence_penalty for i in pen], device=dev)[:, None]
            x = x.index_put((rows,), x[rows] - fp * c - pp * (c > 0))
        constrained = [i for i, r in enumerate(reqs) if r.params.matcher is not None]
        if constrained:
            x = grammar.mask(x, constrained, [reqs[i].params.matcher for i in constrained])
        rand = [i for i, r in enumerate(reqs) if r.params.temperature != 0]
        tokens = torch.argmax(x, dim=-1)
        if rand:
            tokens[rand] = self._draw(x[rand], [reqs[i] for i in rand])
        if pen:
            self.counts.index_put_((slots, tokens[rows]), torch.ones(len(pen), device=dev), accumulate=True)
        if constrained:
            grammar.advance([reqs[i].params.matcher for i in constrained], tokens[constrained].tolist())
        lps: list[TokenLogprobs | None] = [None] * len(reqs)
        ask = [i for i, r in enumerate(reqs) if r.params.logprobs is not None]
        if ask:
            lp = torch.log_softmax(raw[ask], dim=-1)
            chosen = lp.gather(1, tokens[ask][:, None]).squeeze(1).tolist()
            top = max(reqs[i].params.logprobs for i in ask)
            vals, ids = lp.topk(top, dim=-1) if top else (lp[:, :0], lp[:, :0].long())
            vals, ids = vals.tolist(), ids.tolist()
            for j, i in enumerate(ask):
                n = reqs[i].params.logprobs
                lps[i] = [chosen[j], [[t, v] for t, v in zip(ids[j][:n], vals[j][:n])]]
        return tokens.tolist(), lps

    def _draw(self, x: torch.Tensor, reqs: list[Sampled]) -> torch.Tensor:
        """Temperature, top-k and top-p for rows x [m, vocab], then one draw per row."""
        dev = x.device
        x = x / torch.tensor([r.params.temperature for r in reqs], device=dev)[:, None]
        truncate = any(r.params.top_k > 0 or r.params.top_p < 1 for r in reqs)
        if truncate:
            x, order = x.sort(dim=-1, descending=True)
            ks = torch.tensor([r.params.top_k or x.shape[1] for r in reqs], device=dev)
            x = x.masked_fill(torch.arange(x.shape[1], device=dev)[None, :] >= ks[:, None], float("-inf"))
        probs = torch.softmax(x, dim=-1)
        if truncate:
            # keep the smallest prefix whose mass reaches top_p (always at least the first token)
            tp = torch.tensor([r.params.top_p for r in reqs], device=dev)[:, None]
            probs = probs.masked_fill(probs.cumsum(-1) - probs > tp, 0.0)
        # Inverse-CDF draw: one uniform number per row against the row's cumulative mass. Exact sampling from
        # `probs`, and ~10x cheaper than torch.multinomial on CPU (which spent ~14% of a serving step there).
        # A seeded row takes its number from its own generator (a CPU one), so its draw depends on nothing
        # else in the batch.
        u = torch.rand(len(reqs), 1, device=dev)
        for i, r in enumerate(reqs):
            if r.gen is not None:
                u[i] = torch.rand(1, generator=r.gen).to(dev)
        cdf = probs.cumsum(-1)
        choice = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1).clamp_(max=probs.shape[1] - 1)
        # float rounding at the very ends (u * total == total) may land on a token with no mass: take the mode
        empty = probs.gather(1, choice[:, None]).squeeze(1) == 0
        choice = torch.where(empty, probs.argmax(-1), choice)
        return order.gather(1, choice[:, None]).squeeze(1) if truncate else choice
