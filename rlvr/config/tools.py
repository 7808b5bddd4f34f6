"""The tools a policy may call while it reasons (``tools``): which ones, and the budgets of a trajectory."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlvr.config.problems import Problems

BUILTIN_TOOLS = ("crop", "zoom_in", "draw_horizontal_line", "draw_vertical_line", "point")


@dataclass
class ToolServiceConfig:
    name: str  # the tool name the policy writes in its call: detect | segment | ocr (python -m rlvr.agent.services)
    url: str  # the service's address, e.g. http://127.0.0.1:8101
    timeout_s: float = 8.0  # the whole call, retries included; keep it under tools.call_timeout_s
    retries: int = 2  # further attempts after a connection error or a 5xx
    backoff_s: float = 0.5  # wait before retry k (from 0): backoff_s * 2**k, within timeout_s
    token_env: str | None = None  # environment variable holding the service's bearer token, if it wants one


@dataclass
class ToolsConfig:
    # In-process image tools offered to the policy, in the prompt's order: crop | zoom_in |
    # draw_horizontal_line | draw_vertical_line | point. Empty (and no services): no tools, single-turn rollouts.
    names: list[str] = field(default_factory=list)
    services: list[ToolServiceConfig] = field(default_factory=list)  # model-backed tools over HTTP
    system_prompt: str | None = None  # text before the tools section of the system turn; None = data.system_prompt or Qwen's default
    max_turns: int = 4  # model turns per trajectory (calls + the answer)
    max_calls: int = 3  # tool calls per trajectory; a call past it ends the trajectory (end_reason max_calls)
    # Tokens after the prompt: the model's turns and the observations; each turn samples at most
    # min(rollout.max_new_tokens, what is left). None = max_turns * rollout.max_new_tokens.
    max_total_tokens: int | None = None
    max_images: int = 4  # observation images per trajectory; an observation past it ends the trajectory
    call_timeout_s: float = 10.0  # per call; past it the model reads a timeout error
    max_zoom_side: int = 1024  # zoom_in's output is capped at this many pixels on its longer side

    @property
    def enabled(self) -> bool:
        return bool(self.names or self.services)

    def trajectory_tokens(self, max_new_tokens: int) -> int:
        """Tokens a trajectory may hold after the prompt, with ``rollout.max_new_tokens`` per turn."""
        return self.max_total_tokens or self.max_turns * max_new_tokens

    def problems(self) -> Problems:
        p = Problems()
        for name in self.names:
            p.one_of("tools.names entry", name, BUILTIN_TOOLS)
        names = list(self.names) + [s.name for s in self.services]
        p.require(len(set(names)) == len(names), f"tools: a tool is listed twice ({names}); each name once.")
        for s in self.services:
            p.require(s.url.startswith(("http://", "https://")), f"tools.services {s.name!r}: url={s.url!r} must "
                                                                 "start with http:// or https://.")
            p.require(0 < s.timeout_s <= self.call_timeout_s, f"tools.services {s.name!r}: timeout_s={s.timeout_s} "
                      f"must be > 0 and <= tools.call_timeout_s={self.call_timeout_s} (its retries fit in one call).")
        p.require(self.max_turns >= 1, f"tools.max_turns={self.max_turns} must be >= 1 (model turns, the answer's included).")
        p.require(self.max_calls >= 0, f"tools.max_calls={self.max_calls} must be >= 0.")
        p.require(self.max_total_tokens is None or self.max_total_tokens >= 1,
                  f"tools.max_total_tokens={self.max_total_tokens} must be >= 1, or null.")
        p.require(self.max_images >= 0, f"tools.max_images={self.max_images} must be >= 0.")
        p.require(self.call_timeout_s > 0, f"tools.call_timeout_s={self.call_timeout_s} must be > 0.")
        p.require(self.max_zoom_side >= 16, f"tools.max_zoom_side={self.max_zoom_side} must be >= 16 pixels.")
        return p
