"""Packing: a packed batch has the same loss as the same examples unpacked, and packed
examples never attend to each other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from whetstone_contract.config import DatasetSpec
from whetstone_trainer.data import (
    IGNORE_INDEX,
    Row,
    TextSplits,
    as_row,
    collate,
    pack,
    padding_waste_percent,
    prepare_text,
    tokenize_example,
    tokenize_splits,
)
from whetstone_trainer.model import load_base_model, load_tokenizer

pytestmark = pytest.mark.trainer

# float32 on CPU: block-diagonal attention over a packed row versus separate padded rows
# differ only by summation order.
LOSS_TOLERANCE = 1e-5


def _splits(seed_data: Path) -> tuple[DatasetSpec, TextSplits]:
    spec = DatasetSpec.model_validate(
        {
            "train": {"uri": f"file://{seed_data}"},
            "validationSplit": 0.1,
            "redact": ["email", "phone", "secret"],
        }
    )
    return spec, prepare_text(spec, lambda u: Path(u.removeprefix("file://")).read_bytes(), 42)


def _unpacked_loss(model: Any, rows: list[Row], pad_id: int) -> torch.Tensor:
    """The conventional path: one example per row, right padding, 2D attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), IGNORE_INDEX)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row.input_ids)
        labels[i, : len(row)] = torch.tensor(row.labels)
        mask[i, : len(row)] = 1
    return model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss


def test_packed_loss_equals_unpacked(seed_data: Path, tiny_model_dir: Path) -> None:
    _, splits = _splits(seed_data)
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_base_model(tiny_model_dir).eval()
    examples = [tokenize_example(tokenizer, e) for e in splits.train[:24]]
    packed = pack(examples, 256)
    assert len(packed) < len(examples)  # several examples share a row
    assert sum(len(r) for r in packed) == sum(len(e) for e in examples)
    with torch.no_grad():
        packed_loss = model(**collate(packed, tokenizer.pad_token_id), use_cache=False).loss
        unpacked_loss = _unpacked_loss(model, [as_row(e) for e in examples], tokenizer.pad_token_id)
    assert abs(float(packed_loss) - float(unpacked_loss)) < LOSS_TOLERANCE, (
        float(packed_loss),
        float(unpacked_loss),
    )


def test_packed_examples_do_not_attend_to_each_other(seed_data: Path, tiny_model_dir: Path) -> None:
    _, splits = _splits(seed_data)
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_base_model(tiny_model_dir).eval()
    first, second = (tokenize_example(tokenizer, e) for e in splits.train[:2])
    row = pack([first, second], 512)
    assert len(row) == 1
    batch = collate(row, tokenizer.pad_token_id)
    # Change every token of the example placed first: the other one's logits must not move.
    placed_first = len(max(first, second, key=len))
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][0, 1:placed_first] = (changed["input_ids"][0, 1:placed_first] + 7) % 500
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        b = model(input_ids=changed["input_ids"], position_ids=changed["position_ids"]).logits
    assert torch.allclose(a[0, placed_first:], b[0, placed_first:], atol=1e-6)
    assert not torch.allclose(a[0, 1:placed_first], b[0, 1:placed_first])


def test_padding_waste_is_reported(seed_data: Path, tiny_model_dir: Path) -> None:
    assert padding_waste_percent([10, 10, 5, 5], 2) == 0.0
    assert padding_waste_percent([10, 5], 2) == 25.0
    assert padding_waste_percent([], 4) == 0.0
    _, splits = _splits(seed_data)
    tokenizer = load_tokenizer(tiny_model_dir)
    unpacked = tokenize_splits(
        splits,
        tokenizer,
        max_len=256,
        packing=False,
        batch_size=8,
    ).report
    _, splits = _splits(seed_data)
    packed = tokenize_splits(
        splits,
        tokenizer,
        max_len=256,
        packing=True,
        batch_size=8,
    ).report
    assert unpacked.padding_waste_percent is not None and packed.padding_waste_percent is not None
    assert 0 < unpacked.padding_waste_percent < 100
    assert packed.padding_waste_percent < unpacked.padding_waste_percent
    assert packed.dataset_digest == unpacked.dataset_digest
    assert packed.tokens == unpacked.tokens
