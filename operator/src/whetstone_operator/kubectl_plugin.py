"""`kubectl whetstone`: promote, abort, retry, pause and resume Rollouts, approve and revoke
ModelVersions.

Installed as the `kubectl-whetstone` executable, so kubectl finds it as a plugin. Every command
is an annotation with a fresh value (the controller acts on each value once and records it in
status), so nothing that Argo CD syncs from Git changes:

    kubectl whetstone promote grader [--full] [-n ml]
    kubectl whetstone abort grader
    kubectl whetstone retry grader
    kubectl whetstone pause grader
    kubectl whetstone resume grader
    kubectl whetstone approve grader-llama-3-2-1b-v4-20261122
    kubectl whetstone revoke grader-llama-3-2-1b-v4-20261122
"""

from __future__ import annotations

import argparse
import os
import subprocess  # nosec B404 # runs kubectl with an argument list, never a shell
import sys
import time

from whetstone_operator.api.names import APPROVE_ANNOTATION, REVOKE_ANNOTATION
from whetstone_operator.api.names import ROLLOUT_COMMANDS as ROLLOUT_ANNOTATIONS

ROLLOUT_COMMANDS = tuple(ROLLOUT_ANNOTATIONS)
VERSION_COMMANDS = {"approve": APPROVE_ANNOTATION, "revoke": REVOKE_ANNOTATION}


def annotation_for(command: str, command_id: str, full: bool = False) -> tuple[str, str]:
    """(resource, `key=value`) for a command; the value is what the controller records."""
    if command in ROLLOUT_COMMANDS:
        value = f"full-{command_id}" if command == "promote" and full else command_id
        return "rollouts.whetstone.dev", f"{ROLLOUT_ANNOTATIONS[command]}={value}"
    if command in VERSION_COMMANDS:
        return "modelversions.whetstone.dev", f"{VERSION_COMMANDS[command]}=true"
    raise ValueError(f"unknown command {command}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kubectl whetstone", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("command", choices=[*ROLLOUT_COMMANDS, *VERSION_COMMANDS])
    parser.add_argument(
        "name",
        help="the Rollout (promote/abort/retry/pause/resume) or the ModelVersion (approve/revoke)",
    )
    parser.add_argument("-n", "--namespace", default=None)
    parser.add_argument("--full", action="store_true", help="promote: skip every remaining step")
    parser.add_argument(
        "--id", default=None, help="command value to record (default: the current time)"
    )
    parser.add_argument("--kubeconfig", default=None)
    parser.add_argument("--context", default=None)
    args = parser.parse_args(argv)
    resource, annotation = annotation_for(
        args.command, args.id or str(int(time.time() * 1000)), args.full
    )
    cmd = [os.environ.get("KUBECTL", "kubectl"), "annotate", resource, args.name, annotation]
    cmd.append("--overwrite")
    for flag, value in (
        ("-n", args.namespace),
        ("--kubeconfig", args.kubeconfig),
        ("--context", args.context),
    ):
        if value:
            cmd += [flag, value]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # nosec B603 # kubectl with the user's own arguments, no shell
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode == 0:
        print(f"{args.command} requested for {args.name} ({annotation})")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
