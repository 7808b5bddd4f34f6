"""The synthesis config tree (``SynthConfig``), loaded like training's: YAML recipe, then key=value overrides.

    from rlvr.config.loader import load
    cfg = load(SynthConfig, "recipes/synth/demo.yaml", ["queries.per_image=8"])
    problems = cfg.problems()   # [] when fine; each message says what to change

Every default is here; a recipe only overrides. The comment beside each field is its help
text. Clients are named (``clients: [{name: judge, backend: openai, ...}]``) and the stages
refer to them by name (``categories.client: judge``), so one endpoint serves several stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlvr.config.problems import Problems

CLIENT_BACKENDS = ("openai", "engine", "scripted")
CATEGORY_BACKENDS = ("vlm", "annotations")
INSTANCE_BACKENDS = ("sam3", "detector", "annotations")
WRITERS = ("programmatic", "vlm")
# A scripted client's canned behaviour: "oracle" answers each query with its writer's answer
# (plumbs stage 4 without a model: demos and tests only); any other value is a JSON file
# holding a list of replies, used in turn.
ORACLE = "oracle"


@dataclass
class ClientConfig:
    name: str = ""  # what stages call this client (categories.client, queries.client, verify.client, ...)
    backend: str = "openai"  # openai (an OpenAI-compatible /v1/chat/completions) | engine (rlvr's rollout engine) | scripted
    base_url: str = ""  # openai: the endpoint, e.g. http://localhost:8000/v1 (vLLM, SGLang, transformers serve)
    model: str = ""  # openai: the served model's name; engine: a local model folder
    api_key_env: str | None = None  # openai: environment variable holding the API key (never the key itself)
    engine: str = "hf"  # engine: rlvr's rollout engine, hf | vllm
    script: str = ORACLE  # scripted: "oracle" (answers with the writer's answer) or a JSON file of replies
    concurrency: int = 8  # requests in flight at once
    retries: int = 4  # attempts after the first, with exponential backoff
    timeout_s: float = 120.0  # per request
    cache_dir: str | None = None  # on-disk cache keyed by request; a rerun re-sends nothing it has; null = none
    max_tokens: int = 1024  # completion budget per sample
    seed: int = 0  # engine: the seed stream of sampled requests (reproducible samples)
    overrides: list[str] = field(default_factory=list)  # engine: training-config key=value, e.g. [data.max_pixels=50176]

    def problems(self) -> Problems:
        p, at = Problems(), f"clients[{self.name or '?'}]"
        p.require(bool(self.name.strip()), "clients: a client has no name; give each one, e.g. "
                                           "clients=[{name: solver, backend: openai, ...}].")
        p.one_of(f"{at}.backend", self.backend, CLIENT_BACKENDS)
        if self.backend == "openai":
            p.require(self.base_url.startswith(("http://", "https://")),
                      f"{at}.base_url={self.base_url!r}: an openai client needs the endpoint's URL, "
                      "e.g. http://localhost:8000/v1.")
            p.require(bool(self.model), f"{at}.model is empty: name the served model (what /v1/models lists).")
        if self.backend == "engine":
            p.require(bool(self.model), f"{at}.model is empty: an engine client needs a local model folder.")
            p.one_of(f"{at}.engine", self.engine, ("hf", "vllm"))
        p.require(self.concurrency >= 1, f"{at}.concurrency={self.concurrency} must be >= 1.")
        p.require(self.retries >= 0, f"{at}.retries={self.retries} must be >= 0.")
        p.require(self.timeout_s > 0, f"{at}.timeout_s={self.timeout_s} must be > 0 (seconds).")
        return p


@dataclass
class CategoriesConfig:
    backend: str = "vlm"  # vlm (a VLM lists the categories) | annotations (the categories of instances.annotations)
    client: str = ""  # vlm: the name of the client in `clients`
    max_categories: int = 20  # keep at most this many names per image, in the order listed

    def problems(self) -> Problems:
        p = Problems()
        p.one_of("categories.backend", self.backend, CATEGORY_BACKENDS)
        p.require(self.max_categories >= 1, f"categories.max_categories={self.max_categories} must be >= 1.")
        return p


@dataclass
class InstancesConfig:
    backend: str = "sam3"  # sam3 | detector (boxes only) | annotations (COCO JSON: skips stages 1-2's models)
    model: str = ""  # sam3/detector: local folder or hub id of the model
    device: str = "cpu"  # sam3/detector: torch device
    score_threshold: float = 0.5  # keep instances scored at least this
    mask_threshold: float = 0.5  # sam3: mask logits threshold
    min_instances: int = 3  # images with fewer instances are dropped (counted as too_few_instances)
    annotations: str = ""  # annotations: a COCO-style JSON whose file_name are relative to --images

    def problems(self) -> Problems:
        p = Problems()
        p.one_of("instances.backend", self.backend, INSTANCE_BACKENDS)
        if self.backend in ("sam3", "detector"):
            p.require(bool(self.model), f"instances.model is empty: instances.backend={self.backend} needs a "
                                        "model folder or hub id (or use instances.backend=annotations).")
        if self.backend == "annotations":
            p.require(bool(self.annotations), "instances.annotations is empty: instances.backend=annotations "
                                              "needs a COCO-style JSON, e.g. instances.annotations=coco.json.")
        p.require(0 <= self.score_threshold <= 1, f"instances.score_threshold={self.score_threshold} must be "
                                                  "in [0, 1].")
        p.require(self.min_instances >= 1, f"instances.min_instances={self.min_instances} must be >= 1.")
        return p


@dataclass
class QueriesConfig:
    writer: str = "programmatic"  # programmatic (exact answers from known attributes) | vlm (HopChain's writer)
    client: str = ""  # vlm: the writer's client name
    min_k: int = 3  # fewest instances per combination (the paper: 3)
    max_k: int = 6  # most instances per combination (the paper: 6)
    per_image: int = 4  # queries (vlm: combinations tried) per image
    temperature: float = 0.7  # vlm: the writer's sampling temperature

    def problems(self) -> Problems:
        p = Problems()
        p.one_of("queries.writer", self.writer, WRITERS)
        p.require(1 <= self.min_k <= self.max_k, f"queries.min_k={self.min_k} must be >= 1 and <= "
                                                 f"queries.max_k={self.max_k}.")
        p.require(self.per_image >= 1, f"queries.per_image={self.per_image} must be >= 1.")
        return p


@dataclass
class VerifyConfig:
    enabled: bool = True  # false keeps every written query (no solver agreement checked)
    client: str = ""  # the solvers' client name; empty = only human annotations (import_file)
    k: int = 4  # independent solver samples per query; kept only when all K agree with the writer
    temperature: float = 1.0  # solver sampling temperature (independent samples need > 0)
    export_file: str = ""  # write the queries for human annotators here after stage 3 (JSONL; CSV if it ends .csv)
    import_file: str = ""  # human annotators' answers (the export, filled in); counted with the solvers'

    def problems(self) -> Problems:
        p = Problems()
        p.require(self.k >= 1, f"verify.k={self.k} must be >= 1 (the paper: 4 annotators).")
        if self.enabled:
            p.require(bool(self.client or self.import_file), "verify.enabled=true but there are no solvers: set "
                      "verify.client to a client name, or verify.import_file to annotators' answers "
                      "(or verify.enabled=false).")
        return p


@dataclass
class DifficultyConfig:
    enabled: bool = False  # drop queries a weaker model always solves (pass@n = 1)
    client: str = ""  # the weaker model's client name
    n: int = 8  # samples per query
    temperature: float = 1.0  # its sampling temperature

    def problems(self) -> Problems:
        p = Problems()
        if self.enabled:
            p.require(bool(self.client), "difficulty.enabled=true needs difficulty.client, the weaker model's "
                                         "client name.")
            p.require(self.n >= 1, f"difficulty.n={self.n} must be >= 1.")
        return p


@dataclass
class OutputConfig:
    variants: bool = True  # also write the paper's ablations: train_last_hop.jsonl, train_second_half.jsonl
    page_samples: int = 24  # queries shown on the HTML page (0 = no page)

    def problems(self) -> Problems:
        p = Problems()
        p.require(self.page_samples >= 0, f"output.page_samples={self.page_samples} must be >= 0.")
        return p


@dataclass
class SynthConfig:
    seed: int = 0  # the combinations and programmatic chains of an image depend on (seed, image id) only
    categories: CategoriesConfig = field(default_factory=CategoriesConfig)  # stage 1: what is in the image
    instances: InstancesConfig = field(default_factory=InstancesConfig)  # stage 2: where each instance is
    queries: QueriesConfig = field(default_factory=QueriesConfig)  # stage 3: multi-hop queries
    verify: VerifyConfig = field(default_factory=VerifyConfig)  # stage 4: K solvers must agree with the writer
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)  # stage 4: drop what a weak model always solves
    clients: list[ClientConfig] = field(default_factory=list)  # named VLM clients the stages refer to
    output: OutputConfig = field(default_factory=OutputConfig)  # JSONL variants and the HTML page

    def client(self, name: str) -> ClientConfig:
        return next(c for c in self.clients if c.name == name)

    def problems(self) -> Problems:
        p = Problems()
        for section in (self.categories, self.instances, self.queries, self.verify, self.difficulty, self.output):
            p += section.problems()
        names = [c.name for c in self.clients]
        for c in self.clients:
            p += c.problems()
        p.require(len(set(names)) == len(names), f"clients: names must be unique, got {names}.")
        uses = [("categories.client", self.categories.client, self.categories.backend == "vlm"),
                ("queries.client", self.queries.client, self.queries.writer == "vlm"),
                ("verify.client", self.verify.client, self.verify.enabled and bool(self.verify.client)),
                ("difficulty.client", self.difficulty.client, self.difficulty.enabled)]
        for key, name, used in uses:
            if used:
                p.require(name in names, f"{key}={name!r} names no client; define it under clients "
                                         f"(defined: {names or 'none'}).")
        p.require(self.categories.backend != "annotations" or self.instances.backend == "annotations",
                  "categories.backend=annotations takes the categories from instances.annotations; set "
                  "instances.backend=annotations too.")
        return p
