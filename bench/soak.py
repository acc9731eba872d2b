"""The reliability suite in soak mode: the same tests as the CI tier, with larger counts.

Runs tests/integration/test_reliability.py (operator crash chaos, API faults through the fault
proxy, two peered replicas, the bad-input corpus) with 50 FineTuneJobs (created over 90 s) and
5 Rollouts under up to 25 random SIGKILLs, and 30 FineTuneJobs and 3 Rollouts through the
proxy, for `--rounds` seeds; then tests/trainer/test_preemption.py once per seed unless
`--no-trainer`. Figures from every round go to bench/results/soak.json (objects, kills, faults
injected and retried, inputs tried, lost or duplicated) and a summary table is printed.
Environment variables of the same names override the counts.

    .venv/bin/python bench/soak.py                      # one round, a random seed
    .venv/bin/python bench/soak.py --rounds 3 --seed 7  # seeds 7, 8, 9
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "soak.json"
SOAK_COUNTS = {
    "WHETSTONE_CHAOS_JOBS": "50",
    "WHETSTONE_CHAOS_ROLLOUTS": "5",
    "WHETSTONE_CHAOS_KILLS": "25",
    "WHETSTONE_CHAOS_SPREAD": "90",
    "WHETSTONE_FAULT_JOBS": "30",
    "WHETSTONE_FAULT_ROLLOUTS": "3",
    "WHETSTONE_FAULT_RATE": "0.1",
}


def run_round(seed: int, trainer: bool, extra: list[str]) -> dict[str, Any]:
    """One seed: the reliability tests (and the preemption tests); their figures and outcome."""
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl", delete=False) as report:
        path = Path(report.name)
    env = {
        **os.environ,
        **{k: os.environ.get(k, v) for k, v in SOAK_COUNTS.items()},
        "WHETSTONE_CHAOS_SEED": str(seed),
        "WHETSTONE_RELIABILITY_REPORT": str(path),
    }
    tests = ["tests/integration/test_reliability.py"]
    if trainer:
        tests.append("tests/trainer/test_preemption.py")
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *tests, "-q", "-p", "no:warnings", *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    figures = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.unlink(missing_ok=True)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return {
        "seed": seed,
        "passed": proc.returncode == 0,
        "pytest": summary,
        "seconds": round(time.monotonic() - started, 1),
        "figures": figures,
        "failures": proc.stdout[-6000:] if proc.returncode else "",
    }


def table(rounds: list[dict[str, Any]]) -> str:
    rows = ["| seed | test | objects | kills / faults injected | retried | lost or duplicated |"]
    rows.append("| --- | --- | --- | --- | --- | --- |")
    for entry in rounds:
        for fig in entry["figures"]:
            test = fig["test"]
            if test == "chaos":
                objects = f"{fig['jobs']} FineTuneJobs, {fig['rollouts']} Rollouts"
                stress, retried = f"{fig['kills']} SIGKILLs", "-"
            elif test == "faults":
                objects = f"{fig['jobs']} FineTuneJobs, {fig['rollouts']} Rollouts"
                stress = f"{fig['injectedTotal']} faults ({fig['watches']} watches)"
                retried = str(fig["retriedTotal"])
            elif test == "bad-input":
                objects = f"{fig['inputs']} invalid objects"
                stress, retried = f"refused: {fig['refused']}", "-"
            else:
                objects = "2 replicas"
                stress = f"active killed, handover {fig['handoverSeconds']}s"
                retried = "-"
            lost = fig.get("lostOrDuplicated", 0)
            rows.append(f"| {entry['seed']} | {test} | {objects} | {stress} | {retried} | {lost} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="seeds to run, one after another")
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: random)")
    parser.add_argument("--no-trainer", action="store_true", help="skip the preemption tests")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (e.g. -k chaos)")
    args = parser.parse_args(argv)
    first = args.seed if args.seed is not None else secrets.randbelow(2**31)
    rounds = []
    for seed in range(first, first + args.rounds):
        print(f"soak round: seed {seed}", flush=True)
        entry = run_round(seed, not args.no_trainer, args.pytest_args)
        print(f"  {entry['pytest']} in {entry['seconds']}s", flush=True)
        rounds.append(entry)
    result = {
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "counts": {k: os.environ.get(k, v) for k, v in SOAK_COUNTS.items()},
        "rounds": rounds,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rounds))
    print(f"written: {RESULTS.relative_to(REPO)}")
    failed = [r for r in rounds if not r["passed"]]
    for entry in failed:
        print(f"--- seed {entry['seed']} failed ---\n{entry['failures']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
