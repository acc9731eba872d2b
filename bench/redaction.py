"""Redaction time on 1 MB lines: every kind at once, on ordinary text and on the worst texts
for each scanner (the ones tests/unit/test_redact.py runs under a timeout).

    .venv/bin/python bench/redaction.py [--size BYTES] [--repeat N]

Prints one row per text: the best of N runs, in seconds, and how many values were redacted.
2-CPU VM (AMD EPYC, shared, load average about 1), Python 3.11, 1 MB, best of 3: ordinary
text with a value of every kind every 50 characters 0.28 s; the worst texts 0.05-0.65 s, the
slowest `4111 ` repeated (200,000 card-shaped numbers, each Luhn-checked, 0.65 s) and `a::a `
(200,000 IPv6 addresses, 0.63 s).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from whetstone_contract.config import RedactionKind
from whetstone_trainer.redact import redact_text

KINDS: list[RedactionKind] = ["secret", "email", "creditCard", "iban", "ipAddress", "phone"]
ORDINARY = (
    "Please reset the password for alice@example.com; her card 4111 1111 1111 1111 was "
    "charged twice. Refund to DE89 3704 0044 0532 0130 00 and call +1 415-555-0134. The "
    "service at 10.0.0.12 (fe80::1ff:fe23:4567:890a) logs Bearer abcdef0123456789ABCDEF "
    "on every request, and the config holds ghp_0123456789abcdefghijABCDEFGHIJ012345. "
    "Nothing else in this paragraph is sensitive: it is ordinary prose about the job. "
)
WORST = [
    "a",
    "@",
    "a@",
    "a@a.",
    "a@a.aa ",
    "1",
    "1 ",
    "4111 ",
    "DE00 ",
    "a:a: ",
    "a::a ",
    "1:2:3:4:5:6:7:8:9 ",
    "eyJ-",
    "bearer ",
    "a_token ",
    "a1@-.:_ +(",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'text':24} {'seconds':>8} {'redacted':>9}")
    for name, unit in [("ordinary", ORDINARY), *((repr(u), u) for u in WORST)]:
        line = (unit * (args.size // len(unit) + 1))[: args.size]
        best, counts = float("inf"), Counter[str]()
        for _ in range(args.repeat):
            counts = Counter()
            start = time.perf_counter()
            redact_text(line, KINDS, counts)
            best = min(best, time.perf_counter() - start)
        print(f"{name:24} {best:8.3f} {sum(counts.values()):9d}")


if __name__ == "__main__":
    main()
