"""Evaluation: loss, perplexity and token accuracy on assistant tokens; exact match and
ROUGE-L of greedy generations against the reference answers; baseline deltas.

Everything runs locally (rouge-score and small functions; nothing is fetched from a hub).
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from typing import Any

from whetstone_trainer.data import IGNORE_INDEX, Example, Row, TokenizedExample, as_row, collate

LOWER_IS_BETTER = {"evalLoss", "perplexity"}


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and articles, collapse whitespace (SQuAD-style)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    if not references:
        return 0.0
    hits = sum(
        normalize_answer(p) == normalize_answer(r)
        for p, r in zip(predictions, references, strict=True)
    )
    return hits / len(references)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure."""
    from rouge_score import rouge_scorer

    if not references:
        return 0.0
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = [
        scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)
    ]
    return float(sum(scores) / len(scores))


def loss_and_accuracy(
    model: Any, examples: Sequence[TokenizedExample], pad_id: int, batch_size: int = 8
) -> tuple[float, float]:
    """Mean cross-entropy over assistant tokens (token-weighted) and next-token accuracy."""
    import torch

    total_loss = 0.0
    total_tokens = 0
    correct = 0
    model.eval()
    rows: list[Row] = [as_row(e) for e in examples]
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = collate(rows[start : start + batch_size], pad_id)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            logits = model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
            ).logits.float()
            shift_logits = logits[:, :-1, :]
            shift_labels = batch["labels"][:, 1:]
            mask = shift_labels != IGNORE_INDEX
            losses = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)),
                shift_labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total_loss += float(losses)
            total_tokens += int(mask.sum())
            correct += int(((shift_logits.argmax(-1) == shift_labels) & mask).sum())
    if total_tokens == 0:
        return float("nan"), 0.0
    return total_loss / total_tokens, correct / total_tokens


def generate_answers(
    model: Any, tokenizer: Any, examples: Sequence[Example], max_new_tokens: int
) -> tuple[list[str], list[str]]:
    """Greedy answers to each example's conversation up to its last assistant turn."""
    import torch

    predictions: list[str] = []
    references: list[str] = []
    model.eval()
    for example in examples:
        prompt = example.messages[:-1]
        references.append(example.messages[-1]["content"])
        ids = tokenizer.apply_chat_template(
            prompt, tokenize=True, return_dict=True, add_generation_prompt=True
        )["input_ids"]
        input_ids = torch.tensor([list(ids)], device=model.device)
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        predictions.append(
            tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True).strip()
        )
    return predictions, references


def evaluate_model(
    model: Any,
    tokenizer: Any,
    tokenized: Sequence[TokenizedExample],
    examples: Sequence[Example],
    metrics: Sequence[str],
    *,
    max_new_tokens: int,
    max_examples: int | None = None,
) -> dict[str, float]:
    """The requested metrics on one dataset, named as in the FineTuneJob status."""
    tokenized = list(tokenized)[:max_examples] if max_examples else list(tokenized)
    examples = list(examples)[:max_examples] if max_examples else list(examples)
    out: dict[str, float] = {}
    loss, accuracy = loss_and_accuracy(model, tokenized, tokenizer.pad_token_id)
    out["evalLoss"] = round(loss, 6)
    if "perplexity" in metrics:
        out["perplexity"] = round(math.exp(min(loss, 50.0)), 6)
    if "accuracy" in metrics:
        out["accuracy"] = round(accuracy, 6)
    if "exactMatch" in metrics or "rougeL" in metrics:
        predictions, references = generate_answers(model, tokenizer, examples, max_new_tokens)
        if "exactMatch" in metrics:
            out["exactMatch"] = round(exact_match(predictions, references), 6)
        if "rougeL" in metrics:
            out["rougeL"] = round(rouge_l(predictions, references), 6)
    return out


def deltas(metrics: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
    """metric - baseline for every metric both have (positive = higher than the base model)."""
    return {k: round(metrics[k] - baseline[k], 6) for k in metrics if k in baseline}


def improved(metric: str, delta: float) -> bool:
    """True when `delta` is an improvement for `metric`."""
    return delta < 0 if metric in LOWER_IS_BETTER else delta > 0
