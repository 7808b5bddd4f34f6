"""Multi-turn rollouts with tools: sample, stop at a call, run it, append its observation, sample again.

``ToolRollout`` wraps any rollout engine (HF or vLLM) and keeps its interface, so the trainer
and the evaluator drive it as they drive the engine. One trajectory per sample:

1. The engine samples the model's turn; ``</tool_call>`` is one of its stop tokens (one token
   in Qwen's tokenizers; a tokenizer that splits it is cut after the text, the samples after it
   dropped, see ``_cut_at_call``).
2. A turn that ends with a call is parsed (``rlvr.agent.calls.parse_tool_call``) and run by the
   registry, which never raises: a malformed call, an unknown tool, bad arguments, a tool's
   exception and a timeout all come back as error text the model reads.
3. The observation (end of the model's turn, the tool's response with its images, the next
   assistant turn's opening) is processed by the run's processor and appended to the token ids
   (``rlvr.batch.continue_prompt``): the model's tokens are never decoded and tokenised again.
4. The next turn is sampled on the whole conversation, with its own seed
   (``mix_seed(sample seed, turn)``), until the model answers or a budget ends the trajectory.

The ``Response`` is the whole trajectory after the prompt: the model's turns (``loss_mask`` 1,
log-probs as sampled) and the observations (mask 0, log-probs 0, their image tokens and pixel
values), with ``turns`` and ``end_reason``. The training forward over it recomputes every model
token's log-prob in the context the model saw, images included.

Budgets (``tools.*``): model turns, calls, tokens after the prompt, observation images. A call
past ``max_calls`` or ``max_turns`` is not run; an observation that would pass ``max_images`` or
leave no room for another token is not appended; the trajectory ends there with that reason,
and the reward reads no answer from it (``Response.answer_ids``).

Several processes: each turn, every rank calls the engine once per micro-batch
(``rollout.micro_batch_size``) of the busiest rank's active trajectories, until every rank's have
ended, so all ranks make the same number of generate calls (ZeRO-3's gathers inside generate must
match); a rank with fewer samples one token of a throwaway prompt for each call it lacks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from rlvr.agent.calls import CALL_CLOSE, generation_prefix, observation_turn, parse_tool_call, tool_call_stop
from rlvr.agent.tools import CallError, ToolRegistry, image_tools
from rlvr.batch import PromptInputs, Response, Turn, continue_prompt
from rlvr.distributed import reduce_over_ranks, world_size
from rlvr.rollout.engine import RolloutEngine
from rlvr.rollout.sampling import mix_seed

END_REASONS = ("answer", "length", "max_turns", "max_calls", "max_tokens", "max_images")
STATUSES = ("ok", "error", "timeout", "invalid")


def service_configs(tools) -> list:
    """``tools.services`` as the clients' ``ServiceConfig``s."""
    from rlvr.agent.services import ServiceConfig

    return [ServiceConfig(s.name, s.url, s.timeout_s, s.retries, s.backoff_s, s.token_env) for s in tools.services]


def build_registry(tools) -> ToolRegistry:
    """The registry of ``tools`` (``cfg.tools``): the named in-process tools, then the services."""
    from rlvr.agent.services import RemoteTool

    builtin = {tool.name: tool for tool in image_tools(tools.max_zoom_side)}
    registry = ToolRegistry([builtin[name] for name in tools.names])
    for service in service_configs(tools):
        try:
            registry.register(RemoteTool.from_config(service))
        except ValueError as e:  # e.g. its token_env is not set
            from rlvr.config import ConfigError

            raise ConfigError(f"tools.services: {e}") from None
    return registry


def check_tool_services(tools) -> None:
    """Raise ``ConfigError`` naming each service in ``tools.services`` that does not answer ``/health``
    or serves another tool: a run against a dead service would only train on error observations."""
    from rlvr.agent.services import check_services
    from rlvr.config import ConfigError

    report = check_services(service_configs(tools)) if tools.services else {}
    bad = [f"{name}: {entry['error']}" for name, entry in report.items() if not entry["ok"]]
    if bad:
        raise ConfigError("tools.services not usable (start them with python -m rlvr.agent.services --tool NAME "
                          "--model ... --port ..., or fix the url):\n  " + "\n  ".join(bad))


def with_tools_prompt(cfg):
    """``cfg`` with the tools section in the system turn (``data.system_prompt``), when tools are on.

    Every prompt of the run (training, evaluation, ``rlvr.validate``'s token budget) is then
    built with the tools listed, as Qwen's text templates list them (``tools_system_prompt``).
    """
    from rlvr.agent.calls import tools_system_prompt

    if not cfg.tools.enabled:
        return cfg
    schemas = build_registry(cfg.tools).schemas()
    system = tools_system_prompt(schemas, cfg.tools.system_prompt or cfg.data.system_prompt)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, system_prompt=system))


def with_tools(engine: RolloutEngine, cfg, processor, accelerator=None) -> RolloutEngine:
    """``engine`` behind the multi-turn tool loop when ``cfg.tools`` names tools, else ``engine`` itself."""
    if not cfg.tools.enabled:
        return engine
    check_tool_services(cfg.tools)
    device = accelerator.device if accelerator is not None else None
    return ToolRollout(engine, build_registry(cfg.tools), processor, cfg.tools, device=device)


@dataclass
class _Trajectory:
    """One sample's conversation while it is being rolled out."""

    prompt_index: int
    seed: int | None
    context: PromptInputs  # the prompt and everything after it so far: the next turn's prompt
    images: list  # the conversation's images (the prompt's, then the observations'), as tools see them
    pieces: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    pixel_values: list[torch.Tensor] = field(default_factory=list)
    image_grid_thw: list[torch.Tensor] = field(default_factory=list)
    observation_images: list = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    length: int = 0  # tokens after the prompt
    calls: int = 0
    end_reason: str | None = None

    def add(self, ids, logprobs, mask, types) -> int:
        start = self.length
        self.pieces.append((ids.long(), logprobs.float(), mask, types.long()))
        self.length += len(ids)
        return start

    def response(self) -> Response:
        ids, logprobs, mask, types = (torch.cat(parts) for parts in zip(*self.pieces))
        return Response(
            prompt_index=self.prompt_index, token_ids=ids, logprobs=logprobs, finished=self.end_reason == "answer",
            loss_mask=mask, mm_token_type_ids=types,
            pixel_values=torch.cat(self.pixel_values) if self.pixel_values else None,
            image_grid_thw=torch.cat(self.image_grid_thw) if self.image_grid_thw else None,
            images=self.observation_images or None, turns=self.turns, end_reason=self.end_reason)


class ToolRollout(RolloutEngine):
    """Multi-turn tool use on top of ``engine`` (see the module docstring). ``device``: where the
    ranks agree on whether anyone still has a trajectory going (None: one process)."""

    def __init__(self, engine: RolloutEngine, registry: ToolRegistry, processor, tools, device=None):
        super().__init__(engine.settings, engine.stop_ids, engine.pad_id)
        self.engine, self.registry, self.processor, self.tools, self.device = engine, registry, processor, tools, device
        self.name = f"{engine.name}+tools"
        self.stop = tool_call_stop(processor.tokenizer)
        if self.stop.token_id is not None and self.stop.token_id not in engine.stop_ids:
            engine.stop_ids.append(self.stop.token_id)  # engines read their stop ids at each generate
        self.stop_ids = engine.stop_ids
        self.assistant_prefix = generation_prefix(processor)

    # the engine's own duties pass through
    def sync_weights(self, model):
        return self.engine.sync_weights(model)

    def sleep(self) -> None:
        self.engine.sleep()

    def wake(self) -> None:
        self.engine.wake()

    def close(self) -> None:
        self.engine.close()

    def budget(self, settings) -> int:
        return self.tools.trajectory_tokens(settings.max_new_tokens)

    def generate(self, prompts, seeds=None, *, settings=None, greedy=False) -> list[Response]:
        settings = settings or self.settings
        budget, g = self.budget(settings), settings.group_size
        first = self.engine.generate(prompts, seeds, greedy=greedy, settings=dataclasses.replace(
            settings, max_new_tokens=min(settings.max_new_tokens, budget)))
        trajectories = []
        for k, r in enumerate(first):  # prompt-major: sample k % g of its prompt
            prompt = prompts[r.prompt_index]
            seed = None if seeds is None else mix_seed(seeds[r.prompt_index], k % g)
            t = _Trajectory(r.prompt_index, seed, prompt, list(prompt.images or []))
            trajectories.append(t)
            self._after_turn(t, r, budget)
        turn = 1
        while True:
            active = [t for t in trajectories if t.end_reason is None]
            # Several processes: every rank makes as many generate calls as the busiest one (each is
            # collective under ZeRO-3), one per micro-batch, as the engine would cut them.
            size = settings.micro_batch_size if world_size() > 1 else max(len(active), 1)
            batches = self._most(-(-len(active) // size))
            if not batches:
                break
            left = max((budget - t.length for t in active), default=1)
            one = dataclasses.replace(settings, group_size=1, max_new_tokens=min(settings.max_new_tokens, left))
            for b in range(batches):
                chunk = active[b * size:(b + 1) * size]
                if chunk:
                    turn_seeds = None if seeds is None else [mix_seed(t.seed, turn) for t in chunk]
                    for t, r in zip(chunk, self.engine.generate([t.context for t in chunk], turn_seeds,
                                                                settings=one, greedy=greedy)):
                        self._after_turn(t, r, budget)
                else:  # keep in step with the ranks still rolling out
                    self.engine.generate(prompts[:1], None, settings=dataclasses.replace(one, max_new_tokens=1),
                                         greedy=True)
            turn += 1
        return [t.response() for t in trajectories]

    def _most(self, n: int) -> int:
        """The largest ``n`` over the ranks."""
        if world_size() == 1:
            return n
        return int(reduce_over_ranks(torch.tensor(n, device=self.device), "max").item())

    def _cut_at_call(self, ids: torch.Tensor) -> int | None:
        """For a tokenizer whose ``</tool_call>`` is several tokens: the length of the shortest
        prefix of ``ids`` whose text holds it (None: no call). The samples after it are dropped:
        a prefix of a sample is itself a sample, its log-probs unchanged."""
        decode = lambda n: self.processor.tokenizer.decode(ids[:n], skip_special_tokens=False)  # noqa: E731
        if CALL_CLOSE not in decode(len(ids)):
            return None
        low, high = 1, len(ids)  # decode(high) holds it; find the smallest such n
        while low < high:
            mid = (low + high) // 2
            low, high = (low, mid) if CALL_CLOSE in decode(mid) else (mid + 1, high)
        return high

    def _after_turn(self, t: _Trajectory, r: Response, budget: int) -> None:
        """Append the model's turn ``r`` to ``t``; run its call and append the observation, or end ``t``."""
        ids, logprobs = r.token_ids, r.logprobs
        calls = self.stop.token_id is not None and len(ids) > 0 and int(ids[-1]) == self.stop.token_id
        if self.stop.token_id is None:
            cut = self._cut_at_call(ids)
            calls = cut is not None
            ids, logprobs = (ids[:cut], logprobs[:cut]) if calls else (ids, logprobs)
        over = len(ids) > budget - t.length
        if over:
            ids, logprobs = ids[:budget - t.length], logprobs[:budget - t.length]
        start = t.add(ids, logprobs, torch.ones(len(ids)), torch.zeros(len(ids)))
        t.turns.append(Turn("model", start, t.length))
        if over or not calls:  # cut where the trajectory's budget, not the turn's, ran out: max_tokens
            t.end_reason = "answer" if r.finished and not over else "max_tokens" if t.length >= budget else "length"
            return
        model_turns = sum(turn.kind == "model" for turn in t.turns)
        if t.calls >= self.tools.max_calls or model_turns >= self.tools.max_turns:
            t.end_reason = "max_calls" if t.calls >= self.tools.max_calls else "max_turns"
            return
        text = self.processor.tokenizer.decode(ids, skip_special_tokens=False)
        call = parse_tool_call(text, self.registry.names()) or CallError(f"no {CALL_CLOSE} in the turn")
        observation = self.registry.run(call, t.images, self.tools.call_timeout_s)
        t.calls += 1
        if len(t.observation_images) + len(observation.images) > self.tools.max_images:
            t.end_reason = "max_images"
            return
        appended = observation_turn(observation, self.processor, self.assistant_prefix)
        n = len(appended.inputs.input_ids)
        if t.length + n >= budget:  # no room left for the model to read it and answer
            t.end_reason = "max_tokens"
            return
        t.context = continue_prompt(t.context, ids, appended.inputs)
        start = t.add(appended.inputs.input_ids, torch.zeros(n), appended.loss_mask, appended.inputs.mm_token_type_ids)
        if appended.inputs.image_grid_thw is not None:
            t.pixel_values.append(appended.inputs.pixel_values)
            t.image_grid_thw.append(appended.inputs.image_grid_thw)
            t.observation_images.extend(appended.inputs.images)
            t.images.extend(appended.inputs.images)
        name = None if isinstance(call, CallError) else call.name
        t.turns.append(Turn("observation", start, t.length, tool=name, status=observation.status,
                            text=observation.text, images=len(observation.images)))


def tool_columns(responses: list[Response]) -> dict[str, list]:
    """Per-response reward columns (``rlvr.rewards.tools``): calls, failed calls, why it ended."""
    turns = [[t for t in (r.turns or []) if t.kind == "observation"] for r in responses]
    return {"tool_calls": [len(obs) for obs in turns],
            "tool_errors": [sum(t.status != "ok" for t in obs) for obs in turns],
            "end_reason": [r.end_reason or "answer" for r in responses]}


def tool_metrics(responses: list[Response], tool_names: list[str]) -> dict[str, float]:
    """This rank's ``tools/*`` metrics of a batch of trajectories; the same keys on every rank.

    ``calls_per_sample`` (and per tool), ``error_frac``/``timeout_frac``/``invalid_frac`` (shares of
    the calls), ``turns_mean`` (model turns), ``answered_after_call`` (of the trajectories that
    ended with an answer, the share that called a tool first), ``end/<reason>`` (shares).
    """
    n = max(len(responses), 1)
    observations = [t for r in responses for t in (r.turns or []) if t.kind == "observation"]
    calls = max(len(observations), 1)
    metrics = {"tools/calls_per_sample": len(observations) / n}
    for name in tool_names:
        metrics[f"tools/{name}/calls_per_sample"] = sum(t.tool == name for t in observations) / n
    for status in STATUSES[1:]:
        metrics[f"tools/{status}_frac"] = sum(t.status == status for t in observations) / calls
    metrics["tools/turns_mean"] = sum(sum(t.kind == "model" for t in r.turns) if r.turns else 1 for r in responses) / n
    answered = [r for r in responses if (r.end_reason or "answer") == "answer"]
    metrics["tools/answered_after_call"] = (sum(r.tool_calls > 0 for r in answered) / len(answered)) if answered else 0.0
    for reason in END_REASONS:
        metrics[f"tools/end/{reason}"] = sum((r.end_reason or "answer") == reason for r in responses) / n
    return metrics
