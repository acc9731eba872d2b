#!/usr/bin/env python3
"""Generate the small seed chat dataset used by the demo and the trainer tests.

Deterministic: the same output on every run (fixed seed, no clock). Writes
manifests/samples/data/tiny-chat.jsonl in the seed format
{"messages": [...], "metadata": {"source", "difficulty", "quality_score", "tags", "role"}}.
A few examples carry (fake) contact details and keys so that the redaction gate has
something to count, and a few are exact duplicates so that dedupe does too.

    python hack/make_tiny_dataset.py [--out PATH] [--check]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SEED = 20261122
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "manifests/samples/data/tiny-chat.jsonl"

SYSTEM = "You are a concise platform engineering assistant."

# (question variants, answer, tags, role): short, fixed answers a tiny model can learn.
FACTS: list[tuple[list[str], str, list[str], str]] = [
    (
        [
            "Which object runs a batch workload to completion?",
            "What runs a batch workload until it completes?",
            "Name the Kubernetes object for run-to-completion work.",
        ],
        "A Job.",
        ["kubernetes"],
        "sre",
    ),
    (
        [
            "What keeps a fixed number of pod replicas running?",
            "Which controller keeps N replicas of a pod alive?",
            "What maintains a stable set of replica pods?",
        ],
        "A ReplicaSet, usually managed by a Deployment.",
        ["kubernetes"],
        "sre",
    ),
    (
        [
            "Where should credentials live in a cluster?",
            "How do pods get credentials safely?",
            "Where do we keep tokens for pods?",
        ],
        "In a Secret, referenced by name.",
        ["kubernetes", "security"],
        "security-engineer",
    ),
    (
        [
            "What does a readiness probe decide?",
            "Why add a readiness probe?",
            "What is the readiness probe for?",
        ],
        "Whether the pod receives traffic.",
        ["kubernetes"],
        "sre",
    ),
    (
        [
            "What does a liveness probe decide?",
            "Why add a liveness probe?",
            "What is the liveness probe for?",
        ],
        "Whether the container is restarted.",
        ["kubernetes"],
        "sre",
    ),
    (
        [
            "How should a reconcile loop behave when run twice?",
            "What property must a reconcile function have?",
            "Is it safe to reconcile the same object again?",
        ],
        "It must be idempotent.",
        ["architecture", "kubernetes"],
        "software-architect",
    ),
    (
        [
            "Where does a controller keep its state?",
            "Where should operator state be stored?",
            "Where does reconcile state belong?",
        ],
        "In the status of the object.",
        ["architecture", "kubernetes"],
        "software-architect",
    ),
    (
        [
            "How do child objects get cleaned up?",
            "What deletes the pods of a deleted job?",
            "How are owned objects garbage collected?",
        ],
        "Through owner references.",
        ["architecture", "kubernetes"],
        "software-architect",
    ),
    (
        [
            "What does LoRA train?",
            "Which weights does LoRA update?",
            "What is trained in a LoRA fine-tune?",
        ],
        "Small low-rank adapter matrices.",
        ["ml"],
        "ml-engineer",
    ),
    (
        [
            "What does QLoRA add to LoRA?",
            "How is QLoRA different from LoRA?",
            "What makes QLoRA cheaper?",
        ],
        "A 4-bit quantised base model.",
        ["ml"],
        "ml-engineer",
    ),
    (
        [
            "What does ZeRO stage 2 shard?",
            "Which state does ZeRO-2 partition?",
            "What is partitioned by ZeRO stage two?",
        ],
        "Optimizer state and gradients.",
        ["ml", "architecture"],
        "ml-engineer",
    ),
    (
        [
            "What does ZeRO stage 3 add?",
            "What else does ZeRO-3 partition?",
            "How does ZeRO stage three go further?",
        ],
        "It also shards the parameters.",
        ["ml", "architecture"],
        "ml-engineer",
    ),
    (
        [
            "Why hold out a validation set?",
            "What is validation data for?",
            "Why keep examples out of training?",
        ],
        "To measure generalisation.",
        ["ml"],
        "ml-engineer",
    ),
    (
        [
            "What is a canary release?",
            "How does a canary rollout work?",
            "Describe a canary deployment.",
        ],
        "A small share of traffic tries the new version first.",
        ["architecture", "delivery"],
        "software-architect",
    ),
    (
        [
            "What should happen when canary analysis fails?",
            "What does a rollout do on failed analysis?",
            "How do we react to a failing canary?",
        ],
        "Send all traffic back to the stable version.",
        ["architecture", "delivery"],
        "software-architect",
    ),
    (
        [
            "Why pin dependency versions?",
            "What do version pins give us?",
            "Why lock package versions?",
        ],
        "Reproducible builds.",
        ["delivery"],
        "software-architect",
    ),
    (
        [
            "What does a digest protect?",
            "Why record a sha256 digest of an artifact?",
            "What is an artifact digest for?",
        ],
        "It proves the files were not changed.",
        ["security"],
        "security-engineer",
    ),
    (
        [
            "Where do model artifacts go?",
            "Where are trained weights stored?",
            "Where does the trainer write its output?",
        ],
        "To object storage, encrypted at rest.",
        ["ml", "security"],
        "ml-engineer",
    ),
    (
        [
            "What does early stopping watch?",
            "When does early stopping end training?",
            "What triggers early stopping?",
        ],
        "The validation loss stops improving.",
        ["ml"],
        "ml-engineer",
    ),
    (
        [
            "What is sequence packing?",
            "Why pack sequences?",
            "What does packing do to short examples?",
        ],
        "Several examples share one row to save padding.",
        ["ml"],
        "ml-engineer",
    ),
]

CONTACTS = [
    "Ping me at jane.doe@example.com if it breaks.",
    "Call the on-call phone +1 415-555-0134 after midnight.",
    "Our test key is AKIAIOSFODNN7EXAMPLE, do not share it.",
    "Mail ops@corp.example.org or call (212) 555-0198.",
    "The staging token=ghp_0123456789abcdefghijABCDEFGHIJ012345 still works.",
]

PREFIXES = ["", "Quick question: ", "Please answer briefly. ", "Help me out. "]


def build(n_examples: int = 200) -> list[dict[str, object]]:
    rng = random.Random(SEED)
    rows: list[dict[str, object]] = []
    difficulties = ["easy", "medium", "hard"]
    seen: set[str] = set()
    while len(rows) < n_examples - len(CONTACTS) - 3:
        for questions, answer, tags, role in FACTS:
            question = rng.choice(PREFIXES) + rng.choice(questions)
            messages = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            if rng.random() < 0.3:
                messages.insert(0, {"role": "system", "content": SYSTEM})
            key = json.dumps(messages)
            if key in seen:  # duplicates are added on purpose below, and only there
                continue
            seen.add(key)
            rows.append(
                {
                    "messages": messages,
                    "metadata": {
                        "source": "synthetic/whetstone-seed",
                        "difficulty": rng.choice(difficulties),
                        "quality_score": round(rng.uniform(0.55, 1.0), 2),
                        "tags": tags,
                        "role": role,
                    },
                }
            )
            if len(rows) >= n_examples - len(CONTACTS) - 3:
                break
    for i, contact in enumerate(CONTACTS):
        questions, answer, tags, role = FACTS[i]
        rows.insert(
            7 + 31 * i,
            {
                "messages": [
                    {"role": "user", "content": f"{contact} {questions[0]}"},
                    {"role": "assistant", "content": answer},
                ],
                "metadata": {
                    "source": "synthetic/whetstone-seed",
                    "difficulty": "easy",
                    "quality_score": 0.9,
                    "tags": tags,
                    "role": role,
                },
            },
        )
    for index in (3, 50, 120):  # exact duplicates, for dedupe
        rows.insert(index + 40, json.loads(json.dumps(rows[index])))
    return rows


def render(rows: list[dict[str, object]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--check",
        action="store_true",
        help="fail when the file on disk differs from what would be generated",
    )
    args = parser.parse_args(argv)
    text = render(build())
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run python hack/make_tiny_dataset.py", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {text.count(chr(10))} examples to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
