"""Datasets of (image(s), question, gold number) rows: loading, checking, and epoch order.

JSONL format, one object per line::

    {"id": "q17", "question": "What digit does the colour stand for?", "answer": "7",
     "images": ["img/q17.png"], "source": "colours"}

``images`` lists paths relative to the JSONL file (a single ``image`` string is also
accepted; text-only rows have neither). ``id`` and ``source`` are optional; other keys are
kept and passed to custom reward functions as columns.

Also read: a folder written by ``datasets.Dataset.save_to_disk``, parquet files, and hub
names (``name`` or ``name:split``) where the network allows, with the column names of
``data.*_key``; images there may be paths, bytes, ``{"bytes", "path"}`` dicts or PIL images.

Every row is checked once at load: empty question, gold that is not a number, missing or
corrupt image, ``<image>`` placeholders that do not match the images, and a prompt whose
image plus text tokens exceed ``data.max_prompt_tokens`` (never truncated: cutting image
tokens breaks the model). A bad row is skipped, counted by reason and the first few are
logged with file, line and id; with ``data.strict=true`` the first bad row raises.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Iterator

from PIL import Image

from rlvr.config import DataConfig

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"


class DataError(ValueError):
    """A bad dataset or row, with where it is and what to do."""


class RowError(DataError):
    """One bad row; ``reason`` is the short name it is counted under."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Example:
    """One checked row."""

    id: str
    question: str
    answer: str  # gold as written in the data
    gold: Any  # parsed gold (rlvr.rewards.Gold), parsed once here
    images: list[Any]  # image references: absolute paths, bytes, or PIL images
    source: str = ""
    columns: dict[str, Any] = field(default_factory=dict)  # other row fields, for custom rewards
    prompt_tokens: int = 0  # image plus text tokens of the prompt


@dataclass
class SkipReport:
    """Counts of skipped rows by reason, with the first message of each of the first few reasons."""

    total_rows: int = 0
    reasons: Counter = field(default_factory=Counter)
    first: list[str] = field(default_factory=list)
    keep_first: int = 5

    def add(self, reason: str, message: str) -> None:
        self.reasons[reason] += 1
        if len(self.first) < self.keep_first and self.reasons[reason] == 1:  # one example per reason
            self.first.append(message)

    @property
    def skipped(self) -> int:
        return sum(self.reasons.values())

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.total_rows} rows, none skipped"
        counts = ", ".join(f"{n} {r}" for r, n in self.reasons.most_common())
        return f"{self.total_rows} rows, skipped {self.skipped} ({counts}); first: " + " | ".join(self.first)


# --------------------------------------------------------------------------- reading rows


def _detect_format(path: str) -> str:
    if os.path.isdir(path):
        return "disk"
    if path.endswith((".jsonl", ".json")):
        return "jsonl"
    if path.endswith(".parquet"):
        return "parquet"
    if not os.path.exists(path) and not path.startswith((".", "/")) and path.count("/") <= 2:
        return "hub"
    raise DataError(
        f"{path}: cannot tell the data format (expected a .jsonl/.parquet file, a save_to_disk folder or a hub "
        "name); set data.format explicitly"
    )


def _jsonl_row(raw: bytes, lineno: int) -> dict | None:
    """One JSONL line as a row; a bad line becomes ``{"__error__": why, "__reason__": counted as}``."""
    try:
        line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # tolerate a byte-order mark
    except UnicodeDecodeError as e:
        return {"__error__": f"line is not UTF-8 text (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the "
                             "line); re-encode the file as UTF-8", "__reason__": "not_utf8"}
    if not line.strip():
        return None
    try:
        row = json.loads(line.rstrip("\r\n"))
    except json.JSONDecodeError as e:
        # json's messages end in "... starting at" for some errors: say the column once
        at = "" if e.msg.endswith(" at") else " at"
        return {"__error__": f"invalid JSON ({e.msg}{at} column {e.colno})", "__reason__": "bad_json"}
    if not isinstance(row, dict):
        return {"__error__": f"line is a JSON {type(row).__name__}, not an object", "__reason__": "bad_json"}
    return row


def read_rows(path: str, fmt: str = "auto") -> Iterator[tuple[str, dict]]:
    """Yield (location, row) pairs; location is ``file:line`` or ``dataset[index]`` for messages."""
    fmt = _detect_format(path) if fmt == "auto" else fmt
    if fmt == "jsonl":
        if not os.path.isfile(path):
            raise DataError(f"data file not found: {path}")
        with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is one bad row, not a bad file
            for lineno, raw in enumerate(f, 1):
                row = _jsonl_row(raw, lineno)
                if row is not None:  # blank lines are not rows
                    yield f"{path}:{lineno}", row
        return
    import datasets

    # datasets logs through its own stderr handler and also propagates: keep only the propagated
    # copy, which the entry points route (rlvr.cli: console filter and train.log)
    logging.getLogger("datasets").handlers.clear()
    if fmt not in ("disk", "parquet", "hub"):
        raise DataError(f"unknown data.format {fmt!r}")
    try:
        if fmt == "disk":
            ds = datasets.load_from_disk(path)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
        elif fmt == "parquet":
            ds = datasets.load_dataset("parquet", data_files=path, split="train")
        else:
            name, _, split = path.partition(":")
            ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # noqa: BLE001 - datasets/pyarrow raise many types for an unreadable source
        what = {"disk": "a save_to_disk folder", "parquet": "a parquet file", "hub": "a hub dataset"}[fmt]
        raise DataError(f"{path}: cannot read it as {what} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "check the path, or set data.format") from None
    for i, row in enumerate(ds):
        yield f"{path}[{i}]", dict(row)


def _image_refs(row: dict, cfg: DataConfig, base_dir: str) -> list[Any]:
    value = row.get(cfg.images_key)
    if value is None:
        value = row.get(cfg.image_key)
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        value = [value]
    refs = []
    for v in value:
        if isinstance(v, dict):  # datasets' Image feature without decoding: {"bytes": ..., "path": ...}
            v = v.get("bytes") or v.get("path")
        if isinstance(v, str) and not os.path.isabs(v):
            v = os.path.join(base_dir, v)
        refs.append(v)
    return refs


def open_image(ref: Any) -> Image.Image:
    """Open an image reference (path, bytes or PIL image) as RGB."""
    if isinstance(ref, Image.Image):
        image = ref
    elif isinstance(ref, (bytes, bytearray)):
        image = Image.open(io.BytesIO(ref))
    elif isinstance(ref, str):
        image = Image.open(ref)
    else:
        raise DataError(f"unsupported image value of type {type(ref).__name__}")
    image.load()
    return image.convert("RGB")


def image_tokens(width: int, height: int, processor) -> int:
    """Tokens one image becomes after the processor's resize, patching and merging."""
    ip = processor.image_processor
    factor = ip.patch_size * ip.merge_size
    min_pixels, max_pixels = ip.size.shortest_edge, ip.size.longest_edge
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return (h // ip.patch_size) * (w // ip.patch_size) // (ip.merge_size**2)


# --------------------------------------------------------------------------- prompts


def build_messages(question: str, n_images: int, cfg: DataConfig) -> list[dict]:
    """Chat messages for one row: images where ``<image>`` stands in the question, else first."""
    text = cfg.prompt_template.replace("{question}", question)
    content: list[dict] = []
    if IMAGE_PLACEHOLDER in text:
        pieces = text.split(IMAGE_PLACEHOLDER)
        for i, piece in enumerate(pieces):
            if i:
                content.append({"type": "image"})
            if piece:
                content.append({"type": "text", "text": piece})
    else:
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
    messages = [{"role": "user", "content": content}]
    if cfg.system_prompt:
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    return messages


def prompt_text(example: Example, processor, cfg: DataConfig) -> str:
    messages = build_messages(example.question, len(example.images), cfg)
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# --------------------------------------------------------------------------- checking


def no_question(row: dict, cfg: DataConfig) -> str:
    """Why a row has no question, naming the column looked for and the columns the row has."""
    key = cfg.question_key
    if key in row:
        value = row[key]
        what = "is empty" if isinstance(value, str) or value is None else f"holds a {type(value).__name__}, not text"
        return f"column {key!r} (data.question_key) {what}"
    columns = [k for k in row if not k.startswith("__")]
    texts = [k for k in columns if isinstance(row[k], str) and k not in (cfg.answer_key, cfg.id_key, cfg.source_key)]
    hint = f"; if the question is in {texts[0]!r}, set data.question_key={texts[0]}" if texts else ""
    return f"no column {key!r} (data.question_key); the row has {columns}{hint}"


def check_row(loc: str, row: dict, cfg: DataConfig, processor, base_dir: str) -> Example:
    """The checked Example, or RowError: training's row check, which ``rlvr.validate`` runs too.

    Without a processor (``rlvr.validate`` when the processor cannot load) everything but the
    prompt's token count is checked, and ``prompt_tokens`` stays 0.
    """
    from rlvr.rewards import GoldParseError, parse_gold

    row_id = str(row.get(cfg.id_key) if row.get(cfg.id_key) is not None else loc)
    where = f"{loc} (id {row_id})" if row.get(cfg.id_key) is not None else loc  # a row without an id: its line
    if "__error__" in row:
        raise RowError(row.get("__reason__", "bad_json"), f"{where}: {row['__error__']}")
    question = row.get(cfg.question_key)
    if not isinstance(question, str) or not question.strip():
        raise RowError("empty_question", f"{where}: {no_question(row, cfg)}")
    answer = row.get(cfg.answer_key)
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise RowError("bad_gold", f"{where}: no gold answer in column {cfg.answer_key!r}")
    answer = str(answer)
    try:
        gold = parse_gold(answer)
    except GoldParseError as e:
        raise RowError("bad_gold", f"{where}: {e}") from None  # e quotes the gold and says why
    images = _image_refs(row, cfg, base_dir)
    n_tokens = 0
    for ref in images:
        if isinstance(ref, str) and not os.path.isfile(ref):
            raise RowError("missing_image", f"{where}: image file not found: {ref}")
        try:
            with (Image.open(io.BytesIO(ref)) if isinstance(ref, (bytes, bytearray)) else
                  ref if isinstance(ref, Image.Image) else Image.open(ref)) as im:
                width, height = im.size
                if not isinstance(ref, Image.Image):
                    im.verify()  # reads the whole file: catches truncated and corrupt images now, not mid-run
        except Exception as e:  # PIL raises many types for bad files
            name = ref if isinstance(ref, str) else f"<{type(ref).__name__}>"
            raise RowError("corrupt_image", f"{where}: cannot read image {name}: {e}") from None
        n_tokens += image_tokens(width, height, processor) if processor is not None else 0
    placeholders = cfg.prompt_template.replace("{question}", question).count(IMAGE_PLACEHOLDER)
    if placeholders and placeholders != len(images):
        raise RowError("placeholder_mismatch", f"{where}: {placeholders} '<image>' placeholders for {len(images)} images")
    extra = {k: v for k, v in row.items() if k not in
             (cfg.question_key, cfg.answer_key, cfg.images_key, cfg.image_key, cfg.id_key)}
    example = Example(id=row_id, question=question, answer=answer, gold=gold, images=images,
                      source=str(row.get(cfg.source_key) or ""), columns=extra)
    if processor is None:
        return example
    # Text tokens: the chat-formatted prompt with one placeholder per image, plus what each
    # placeholder expands to.
    text_ids = processor.tokenizer(prompt_text(example, processor, cfg), add_special_tokens=False)["input_ids"]
    example.prompt_tokens = len(text_ids) - len(images) + n_tokens
    if example.prompt_tokens > cfg.max_prompt_tokens:
        raise RowError(
            "prompt_too_long",
            f"{where}: prompt is {example.prompt_tokens} tokens ({n_tokens} image + {example.prompt_tokens - n_tokens} "
            f"text), over data.max_prompt_tokens={cfg.max_prompt_tokens}; raise the budget or lower data.max_pixels",
        )
    return example


def load_examples(paths: list[str], cfg: DataConfig, processor) -> tuple[list[Example], SkipReport]:
    """Read and check every row of ``paths``; bad rows are skipped and counted (or raise if strict)."""
    report = SkipReport()
    examples: list[Example] = []
    seen_ids: set[str] = set()
    for path in paths:
        base_dir = os.path.dirname(os.path.abspath(path)) if os.path.isfile(path) else os.path.abspath(path)
        for loc, row in read_rows(path, cfg.format):
            if cfg.max_rows is not None and report.total_rows >= cfg.max_rows:
                break
            report.total_rows += 1
            try:
                example = check_row(loc, row, cfg, processor, base_dir)
            except RowError as e:
                if cfg.strict:
                    raise DataError(f"{e} (data.strict=true; set it to false to skip bad rows)") from None
                report.add(e.reason, str(e))
                continue
            if example.id in seen_ids:  # ids key per-prompt seeds and logs: keep them unique
                example.id = f"{example.id}#{report.total_rows}"
            seen_ids.add(example.id)
            examples.append(example)
    if report.total_rows == 0:
        raise DataError(f"no rows in {', '.join(paths)}: the data is empty (blank lines do not count)")
    if report.skipped and examples:  # with none left, the error below says it once
        logger.warning("data %s: %s", ",".join(paths), report.summary())
    if not examples:
        raise DataError(f"no usable rows in {paths}: {report.summary()}")
    return examples, report


# --------------------------------------------------------------------------- order


class EpochSampler:
    """Prompt indices in a seeded order, reshuffled each epoch; resumable from (epoch, position)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(self.n))
        if self.shuffle:
            random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int, skip: Collection[int] = ()) -> list[int]:
        """The next ``k`` rows of the order, passing over the rows in ``skip`` (retired prompts,
        ``rlvr.difficulty``): every other row still comes once per epoch."""
        if k > 0 and skip and len(skip) >= self.n:
            raise DataError(f"all {self.n} training prompts are retired (solved on their last visits, "
                            "trainer.dynamic_sampling.retire_after_solved): nothing is left to train on. Add harder "
                            "data, raise retire_after_solved, or set it to 0 to keep every prompt.")
        out = []
        while len(out) < k:
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._make_order()
            row = self._order[self.position]
            self.position += 1
            if row not in skip:
                out.append(row)
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._make_order()
