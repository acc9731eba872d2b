"""First-fit-decreasing packing: the same rows as the plain quadratic algorithm, found in
O(n log n) (pure code, no model)."""

from __future__ import annotations

import random

import pytest

from whetstone_trainer.data import Row, TokenizedExample, pack


def examples_of(lengths: list[int]) -> list[TokenizedExample]:
    return [
        TokenizedExample(input_ids=[i] * n, labels=[-100] * n, source="mem", line=i + 1)
        for i, n in enumerate(lengths)
    ]


def plain_first_fit(examples: list[TokenizedExample], max_len: int) -> list[Row]:
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i))
    rows: list[Row] = []
    for i in order:
        example = examples[i]
        for row in rows:
            if len(row) + len(example) <= max_len:
                break
        else:
            row = Row([], [], [])
            rows.append(row)
        row.input_ids.extend(example.input_ids)
        row.labels.extend(example.labels)
        row.position_ids.extend(range(len(example)))
    return rows


@pytest.mark.parametrize("seed", range(20))
def test_same_rows_as_plain_first_fit(seed: int) -> None:
    rng = random.Random(seed)
    max_len = rng.choice([16, 64, 512])
    lengths = [rng.randint(1, max_len) for _ in range(rng.randint(0, 300))]
    examples = examples_of(lengths)
    assert pack(examples, max_len) == plain_first_fit(examples, max_len)


def test_edge_cases() -> None:
    assert pack([], 8) == []
    (row,) = pack(examples_of([8]), 8)
    assert row.position_ids == list(range(8))
    # Longer than a row (never produced by the tokenizer, which truncates): a row of its own.
    rows = pack(examples_of([3, 12, 5]), 8)
    assert [len(r) for r in rows] == [12, 8]
