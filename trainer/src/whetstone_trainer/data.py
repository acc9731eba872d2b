"""Data preparation: load, validate, select, dedupe, redact, split, tokenise, filter and pack.

Two stages. `prepare_text` works on text only (no tokenizer, no torch): schema checks with
line numbers, selection by metadata, exact-duplicate removal, redaction and the seeded
split. Redaction happens here, so redacted text is all that ever reaches a tokenizer —
including the one trained for tiny:// models. `tokenize_splits` applies the chat template
with an assistant-only loss mask, drops over-long examples and optionally packs examples
into rows whose position ids restart at every example (the attention layers then keep
examples from seeing each other). Both stages fill the same DataReport.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from whetstone_contract.config import DataSelection, DatasetSpec, RedactionKind
from whetstone_contract.result import DataReport
from whetstone_trainer.redact import redact_text

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
MAX_REPORTED_LINES = 50
# What a report line may quote of the data, and how long the reason may be.
EXCERPT_CHARS = 40
REASON_CHARS = 240

Message = dict[str, str]


class DataError(ValueError):
    """The data cannot be used; `report` holds what was found (line numbers included)."""

    def __init__(self, message: str, report: DataReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class Example:
    """One validated example, in chat form."""

    messages: list[Message]
    metadata: dict[str, Any]
    source: str
    line: int

    def canonical(self) -> str:
        """Stable text of the example's messages (dedupe key and digest input)."""
        return json.dumps(self.messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass
class TokenizedExample:
    """One example after the chat template: ids and labels (-100 outside assistant turns)."""

    input_ids: list[int]
    labels: list[int]
    source: str
    line: int

    def __len__(self) -> int:
        return len(self.input_ids)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@dataclass
class ReportBuilder:
    """Accumulates the DataReport over every stage.

    The report leaves the trainer (termination message, status, Events, model card): what it
    quotes of the data goes through the dataset's redaction first, and is cut short after.
    """

    dropped: Counter[str] = field(default_factory=Counter)
    redacted: Counter[str] = field(default_factory=Counter)
    invalid_lines: list[str] = field(default_factory=list)
    kinds: Sequence[RedactionKind] = ()

    def excerpt(self, value: Any) -> str:
        """A value from the data as a report may quote it: redacted, then shortened."""
        if len(self.invalid_lines) >= MAX_REPORTED_LINES:
            return "..."  # the reason will not be reported: no need to redact
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return repr(_shorten(self.redact(text), EXCERPT_CHARS))

    def redact(self, text: str) -> str:
        """`text` with the dataset's redaction applied (not counted in the report)."""
        return redact_text(text, self.kinds, Counter())

    def drop(self, reason: str, source: str, line: int, why: str | None = None) -> None:
        self.dropped[reason] += 1
        if why is not None and len(self.invalid_lines) < MAX_REPORTED_LINES:
            why = _shorten(self.redact(why), REASON_CHARS)
            self.invalid_lines.append(f"{source}:{line}: {why}")

    def report(self, **fields: Any) -> DataReport:
        return DataReport(
            dropped=dict(sorted(self.dropped.items())),
            redacted=dict(sorted(self.redacted.items())),
            invalid_lines=list(self.invalid_lines),
            **fields,
        )


# --- schema -------------------------------------------------------------------------------


def _check_metadata(meta: Any) -> str | None:
    if meta is None:
        return None
    if not isinstance(meta, dict):
        return "metadata must be an object"
    score = meta.get("quality_score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
        return "metadata.quality_score must be a number"
    tags = meta.get("tags")
    if tags is not None and (
        not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)
    ):
        return "metadata.tags must be a list of strings"
    role = meta.get("role")
    if role is not None and not isinstance(role, str):
        return "metadata.role must be a string"
    return None


Excerpt = Callable[[Any], str]


def _chat_messages(
    obj: dict[str, Any], excerpt: Excerpt
) -> tuple[list[Message] | None, str | None]:
    messages = obj.get("messages")
    if messages is None:
        return None, "missing messages"
    if not isinstance(messages, list) or not messages:
        return None, "messages must be a non-empty list"
    out: list[Message] = []
    for i, msg in enumerate(messages, start=1):
        if not isinstance(msg, dict):
            return None, f"message {i} is not an object"
        role = msg.get("role")
        if role is None:
            return None, f"message {i} has no role"
        if role not in ROLES:
            return None, (
                f"message {i} has unknown role {excerpt(role)} (expected {', '.join(ROLES)})"
            )
        content = msg.get("content")
        if not isinstance(content, str):
            return None, f"message {i} ({role}) has no text content"
        if role == "assistant" and not content.strip():
            return None, f"message {i} is an empty assistant turn"
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        return None, "no assistant turn (nothing to learn from)"
    if out[-1]["role"] != "assistant":
        return None, "the last message must be an assistant turn"
    return out, None


def _completion_messages(obj: dict[str, Any]) -> tuple[list[Message] | None, str | None]:
    prompt, completion = obj.get("prompt"), obj.get("completion")
    if not isinstance(prompt, str):
        return None, "missing prompt (a string)"
    if not isinstance(completion, str) or not completion.strip():
        return None, "missing or empty completion"
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], None


def _plain_excerpt(value: Any) -> str:
    return repr(_shorten(str(value), EXCERPT_CHARS))


def parse_line(
    text: str, fmt: str, excerpt: Excerpt = _plain_excerpt
) -> tuple[Example | None, str | None]:
    """Validate one JSONL line. Returns (example, None) or (None, reason); a reason quotes the
    data only through `excerpt`."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(obj, dict):
        return None, "expected a JSON object"
    messages, problem = _chat_messages(obj, excerpt) if fmt == "chat" else _completion_messages(obj)
    if problem is not None or messages is None:
        return None, problem
    meta = obj.get("metadata")
    problem = _check_metadata(meta)
    if problem is not None:
        return None, problem
    return Example(messages=messages, metadata=dict(meta or {}), source="", line=0), None


def load_jsonl(
    data: bytes, source: str, fmt: str, builder: ReportBuilder
) -> tuple[list[Example], int]:
    """Parse a JSONL file. Invalid lines are counted and reported; returns (examples, invalid)."""
    examples: list[Example] = []
    invalid = 0
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        builder.drop("invalid", source, 1, "UTF-16 or UTF-32 text: save the file as UTF-8")
        return [], 1
    # Lines end at \n alone: str.splitlines() also breaks at U+2028, U+0085 and the like, which
    # JSON strings may hold. Each line is decoded on its own, so a stray byte costs one line.
    for number, line in enumerate(data.removeprefix(codecs.BOM_UTF8).split(b"\n"), start=1):
        try:
            raw = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            invalid += 1
            builder.drop(
                "invalid", source, number, f"not UTF-8 text ({exc.reason} at byte {exc.start + 1})"
            )
            continue
        if not raw.strip():
            continue
        example, problem = parse_line(raw, fmt, builder.excerpt)
        if example is None:
            invalid += 1
            builder.drop("invalid", source, number, problem)
            continue
        example.source, example.line = source, number
        examples.append(example)
    return examples, invalid


# --- selection, dedupe --------------------------------------------------------------------


def is_selected(example: Example, select: DataSelection | None) -> bool:
    """True when the example's metadata passes `select`."""
    if select is None:
        return True
    meta = example.metadata
    if select.min_quality_score is not None:
        score = meta.get("quality_score")
        if score is None or float(score) < select.min_quality_score:
            return False
    if select.tags and not set(select.tags) & set(meta.get("tags") or []):
        return False
    return not (select.roles and meta.get("role") not in select.roles)


def dedupe(examples: Iterable[Example], seen: set[str], builder: ReportBuilder) -> list[Example]:
    """Drop exact duplicates (same messages), also across files via `seen`."""
    kept: list[Example] = []
    for example in examples:
        key = hashlib.sha256(example.canonical().encode()).hexdigest()
        if key in seen:
            builder.drop("duplicate", example.source, example.line)
            continue
        seen.add(key)
        kept.append(example)
    return kept


# --- redaction ----------------------------------------------------------------------------


def redact_example(example: Example, kinds: Sequence[RedactionKind], counts: Counter[str]) -> None:
    for message in example.messages:
        message["content"] = redact_text(message["content"], kinds, counts)


# --- the text stage -----------------------------------------------------------------------


@dataclass
class TextSplits:
    """Validated, selected, deduplicated, redacted examples per split."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
    builder: ReportBuilder

    def texts(self) -> list[str]:
        """Every message text (already redacted): what a tiny tokenizer may be trained on."""
        return [
            m["content"]
            for split in (self.train, self.validation, self.test)
            for e in split
            for m in e.messages
        ]


def split_examples(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Seeded split: (train, held_out) with held_out ~= fraction of the examples (at least 1)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)  # nosec B311 # a reproducible split of the data, not a secret
    n_held = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    held = sorted(order[:n_held])
    held_set = set(held)
    return [e for i, e in enumerate(examples) if i not in held_set], [examples[i] for i in held]


Reader = Callable[[str], bytes]


def prepare_text(spec: DatasetSpec, read: Reader, seed: int) -> TextSplits:
    """Run the text stage over the train (and validation/test) files named in `spec`.

    Raises DataError when dataset.onInvalid is fail and a line is invalid, or when no
    training example is left.
    """
    builder = ReportBuilder(kinds=spec.redact)
    seen: set[str] = set()

    def stage(uri: str) -> list[Example]:
        source = uri.rsplit("/", 1)[-1] or uri
        data = read(uri)
        if not data.strip():
            raise DataError(f"{source} is empty ({uri}): it holds no example", builder.report())
        examples, _ = load_jsonl(data, source, spec.format, builder)
        selected = []
        for example in examples:
            if is_selected(example, spec.select):
                selected.append(example)
            else:
                builder.drop("notSelected", example.source, example.line)
        kept = dedupe(selected, seen, builder) if spec.dedupe else selected
        for example in kept:
            redact_example(example, spec.redact, builder.redacted)
        return kept

    train = stage(spec.train.uri)
    validation = stage(spec.validation.uri) if spec.validation else []
    test = stage(spec.test.uri) if spec.test else []
    if spec.on_invalid == "fail" and builder.dropped.get("invalid"):
        raise DataError(
            f"{builder.dropped['invalid']} invalid line(s) and dataset.onInvalid is fail: "
            + "; ".join(builder.invalid_lines[:5]),
            builder.report(),
        )
    if spec.validation_split is not None and len(train) >= 2:
        train, validation = split_examples(train, spec.validation_split, seed)
    if not train:
        raise DataError(
            "no training example is left after validation and selection", builder.report()
        )
    if not validation:
        raise DataError(
            "no validation example is left after validation and selection", builder.report()
        )
    return TextSplits(train=train, validation=validation, test=test, builder=builder)


# --- tokenisation -------------------------------------------------------------------------


def _prefix_assistant_mask(tokenizer: Any, messages: list[Message]) -> tuple[list[int], list[int]]:
    """Assistant mask without {% generation %}: tokens added by each assistant turn.

    Used for chat templates that lack generation markers; relies on the template rendering
    a conversation prefix as a prefix of the whole conversation.
    """
    ids: list[int] = list(
        tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    )
    mask = [0] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = (
            len(
                tokenizer.apply_chat_template(
                    messages[:i], tokenize=True, return_dict=True, add_generation_prompt=True
                )["input_ids"]
            )
            if i
            else 0
        )
        end = len(
            tokenizer.apply_chat_template(messages[: i + 1], tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
        for j in range(start, min(end, len(ids))):
            mask[j] = 1
    return ids, mask


def tokenize_example(tokenizer: Any, example: Example) -> TokenizedExample:
    """Chat template + assistant-only labels (loss only on what the assistant says)."""
    out = tokenizer.apply_chat_template(
        example.messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = list(out["input_ids"])
    mask = list(out.get("assistant_masks") or [])
    if not any(mask):
        ids, mask = _prefix_assistant_mask(tokenizer, example.messages)
    labels = [tok if m else IGNORE_INDEX for tok, m in zip(ids, mask, strict=True)]
    # The first token never has a target: it keeps packed neighbours from predicting it.
    if labels:
        labels[0] = IGNORE_INDEX
    return TokenizedExample(input_ids=ids, labels=labels, source=example.source, line=example.line)


def tokenize_list(
    tokenizer: Any, examples: list[Example], max_len: int, builder: ReportBuilder
) -> list[TokenizedExample]:
    kept = []
    for example in examples:
        tokenized = tokenize_example(tokenizer, example)
        if len(tokenized) > max_len:
            builder.drop(
                "tooLong",
                example.source,
                example.line,
                f"too long ({len(tokenized)} tokens > maxSeqLength {max_len})",
            )
            continue
        if not any(label != IGNORE_INDEX for label in tokenized.labels):
            builder.drop("invalid", example.source, example.line, "no assistant token to learn")
            continue
        kept.append(tokenized)
    return kept


@dataclass
class Row:
    """One training row: one example, or several packed with position ids restarting."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def as_row(example: TokenizedExample) -> Row:
    return Row(list(example.input_ids), list(example.labels), list(range(len(example))))


def pack(examples: Sequence[TokenizedExample], max_len: int) -> list[Row]:
    """First-fit-decreasing packing into rows of at most max_len tokens.

    Position ids restart at 0 for each example; the model's attention masks derive one
    causal block per example from them, so packed examples never attend to each other.
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i))
    rows: list[Row] = []
    space = _FreeSpace(len(examples), max_len)
    for i in order:
        example = examples[i]
        # The first row with room; rows not opened yet have all of max_len, so the first
        # of them is found exactly when no open row has room.
        index = space.first_fit(len(example))
        if index is None or index == len(rows):
            index = len(rows)
            rows.append(Row([], [], []))
        row = rows[index]
        row.input_ids.extend(example.input_ids)
        row.labels.extend(example.labels)
        row.position_ids.extend(range(len(example)))
        space.set(index, max_len - len(row))
    return rows


class _FreeSpace:
    """Free space per row in a max segment tree: the first row with room in O(log n), which
    keeps first-fit packing O(n log n) on datasets of millions of examples."""

    def __init__(self, rows: int, capacity: int) -> None:
        self.size = 1
        while self.size < max(rows, 1):
            self.size *= 2
        self.tree = [capacity] * (2 * self.size)

    def set(self, index: int, free: int) -> None:
        node = index + self.size
        self.tree[node] = free
        node //= 2
        while node:
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])
            node //= 2

    def first_fit(self, need: int) -> int | None:
        if self.tree[1] < need:
            return None
        node = 1
        while node < self.size:
            node = 2 * node if self.tree[2 * node] >= need else 2 * node + 1
        return node - self.size


def padding_waste_percent(lengths: Sequence[int], batch_size: int) -> float:
    """Share of pad positions when rows are batched in order and padded to the batch's longest."""
    total = padded = 0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start : start + batch_size]
        total += sum(batch)
        padded += max(batch) * len(batch)
    return 0.0 if padded == 0 else round(100.0 * (padded - total) / padded, 2)


def token_stats(lengths: Sequence[int]) -> dict[str, float]:
    if not lengths:
        return {}
    ordered = sorted(lengths)

    def pct(q: float) -> float:
        return float(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)])

    return {
        "total": float(sum(ordered)),
        "mean": round(sum(ordered) / len(ordered), 2),
        "p50": pct(0.5),
        "p95": pct(0.95),
        "max": float(ordered[-1]),
    }


def dataset_digest(splits: TextSplits) -> str:
    """sha256 over the kept examples of each split, in order (lineage)."""
    digest = hashlib.sha256()
    for name, examples in (
        ("train", splits.train),
        ("validation", splits.validation),
        ("test", splits.test),
    ):
        for example in examples:
            digest.update(f"{name}\t{example.canonical()}\n".encode())
    return f"sha256:{digest.hexdigest()}"


@dataclass
class PreparedData:
    """Everything training and evaluation need from the data, plus the report."""

    train_rows: list[Row]
    validation: list[TokenizedExample]
    test: list[TokenizedExample]
    validation_examples: list[Example]
    test_examples: list[Example]
    report: DataReport


def tokenize_splits(
    splits: TextSplits, tokenizer: Any, *, max_len: int, packing: bool, batch_size: int
) -> PreparedData:
    """Tokenise every split, drop over-long examples, pack (or not) the training rows."""
    builder = splits.builder
    train = tokenize_list(tokenizer, splits.train, max_len, builder)
    validation = tokenize_list(tokenizer, splits.validation, max_len, builder)
    test = tokenize_list(tokenizer, splits.test, max_len, builder)
    if not train:
        raise DataError(f"no training example fits maxSeqLength {max_len}", builder.report())
    if not validation:
        raise DataError(f"no validation example fits maxSeqLength {max_len}", builder.report())
    rows = pack(train, max_len) if packing else [as_row(e) for e in train]

    def keep(examples: list[Example], tokenized: list[TokenizedExample]) -> list[Example]:
        ids = {(e.source, e.line) for e in tokenized}
        return [e for e in examples if (e.source, e.line) in ids]

    kept = TextSplits(
        train=keep(splits.train, train),
        validation=keep(splits.validation, validation),
        test=keep(splits.test, test),
        builder=builder,
    )
    report = builder.report(
        examples=len(train),
        validation_examples=len(validation),
        test_examples=len(test),
        tokens=token_stats([len(e) for e in train]),
        padding_waste_percent=padding_waste_percent([len(r) for r in rows], batch_size),
        dataset_digest=dataset_digest(kept),
    )
    return PreparedData(
        train_rows=rows,
        validation=validation,
        test=test,
        validation_examples=kept.validation,
        test_examples=kept.test,
        report=report,
    )


def text_only_report(splits: TextSplits) -> DataReport:
    """The report of the text stage alone (no tokenizer available)."""
    return splits.builder.report(
        examples=len(splits.train),
        validation_examples=len(splits.validation),
        test_examples=len(splits.test),
        dataset_digest=dataset_digest(splits),
    )


def collate(rows: Sequence[Row], pad_id: int) -> dict[str, Any]:
    """Right-pad rows into a batch. No attention_mask: position ids define the blocks.

    Padding gets its own restarting positions, so it forms a separate block that real
    tokens never see (they come first, and attention is causal).
    """
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row)
        ids[i, :n] = torch.tensor(row.input_ids)
        labels[i, :n] = torch.tensor(row.labels)
        positions[i, :n] = torch.tensor(row.position_ids)
        positions[i, n:] = torch.arange(width - n)
    return {"input_ids": ids, "labels": labels, "position_ids": positions}
