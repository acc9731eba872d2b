"""Operator entry point (what the operator image runs): settings from flags and environment."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import threading
from collections.abc import Callable
from typing import Any

import kopf

from whetstone_operator import handlers  # noqa: F401  (registers the handlers)
from whetstone_operator.settings import (
    OperatorOptions,
    configure,
    parse_trainer_defaults,
    read_approval_key,
    trainer_defaults,
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        obj = getattr(record, "k8s_ref", None)
        if isinstance(obj, dict):
            entry["object"] = {k: obj.get(k) for k in ("namespace", "name", "kind") if obj.get(k)}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _parse(argv: list[str] | None) -> OperatorOptions:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="whetstone-operator", description=__doc__)
    parser.add_argument(
        "--namespace",
        action="append",
        default=[n for n in env("WHETSTONE_NAMESPACES", "").split(",") if n],
        help="watch only this namespace (repeatable); default: the whole cluster",
    )
    parser.add_argument(
        "--peering",
        default=env("WHETSTONE_PEERING", ""),
        help="kopf peering name shared by replicas (only one acts); empty = standalone",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=int(env("WHETSTONE_PEERING_LIFETIME", "60")),
        help="seconds a replica's peering record stays valid without renewal: a standby "
        "replica takes over this long after the active one died (kopf's default: 60)",
    )
    parser.add_argument(
        "--liveness", default=env("WHETSTONE_LIVENESS", ""), help="e.g. http://0.0.0.0:8080/healthz"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(env("WHETSTONE_METRICS_PORT", "0")),
        help="Prometheus metrics port; 0 = off",
    )
    parser.add_argument(
        "--trainer-image",
        default=env("WHETSTONE_TRAINER_IMAGE", "ghcr.io/whetstone/trainer:0.1.0"),
        help="default trainer image",
    )
    parser.add_argument(
        "--progress-port",
        type=int,
        default=int(env("WHETSTONE_PROGRESS_PORT", "8080")),
        help="port of the trainers' progress endpoint",
    )
    parser.add_argument(
        "--webhook-port",
        type=int,
        default=int(env("WHETSTONE_WEBHOOK_PORT", "0")),
        help="serve the admission webhooks (approval, spec validation) on this port; 0 = off",
    )
    parser.add_argument("--webhook-addr", default=env("WHETSTONE_WEBHOOK_ADDR", "0.0.0.0"))  # nosec B104 # the API server calls it over the pod IP
    parser.add_argument(
        "--webhook-host",
        default=env("WHETSTONE_WEBHOOK_HOST", ""),
        help="host name or IP the API server uses to reach the webhook",
    )
    parser.add_argument("--webhook-cert", default=env("WHETSTONE_WEBHOOK_CERT", ""))
    parser.add_argument("--webhook-key", default=env("WHETSTONE_WEBHOOK_KEY", ""))
    parser.add_argument(
        "--webhook-managed",
        default=env("WHETSTONE_WEBHOOK_MANAGED", ""),
        help="name of webhook configurations the operator creates and keeps current; "
        "empty = they are installed by the chart",
    )
    parser.add_argument("--log-format", default=env("WHETSTONE_LOG_FORMAT", "plain"))
    parser.add_argument("--verbose", action="store_true", default=bool(env("WHETSTONE_VERBOSE")))
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=float(env("WHETSTONE_RESYNC_SECONDS", "10")),
        help="re-reconcile every unfinished FineTuneJob and every ModelVersion this often",
    )
    parser.add_argument(
        "--rollout-resync-seconds",
        type=float,
        default=float(env("WHETSTONE_ROLLOUT_RESYNC_SECONDS", "1")),
        help="re-reconcile every unfinished Rollout this often (pauses and analysis rounds "
        "are only as punctual as this)",
    )
    parser.add_argument(
        "--allow-loopback-targets",
        action="store_true",
        default=env("WHETSTONE_ALLOW_LOOPBACK_TARGETS", "").lower() in ("1", "true", "yes"),
        help="let Rollout analysis reach loopback addresses (e.g. a Prometheus on 127.0.0.1): "
        "for test and development clusters only, never in production; link-local, metadata and "
        "API server addresses stay refused",
    )
    args = parser.parse_args(argv)
    if args.resync_seconds <= 0 or args.rollout_resync_seconds <= 0:
        parser.error("resync periods must be positive")
    return OperatorOptions(
        namespaces=tuple(args.namespace),
        peering=args.peering,
        peering_lifetime=args.peering_lifetime,
        liveness=args.liveness,
        metrics_port=args.metrics_port,
        trainer_image=args.trainer_image,
        progress_port=args.progress_port,
        log_format=args.log_format,
        webhook_port=args.webhook_port,
        webhook_addr=args.webhook_addr,
        webhook_host=args.webhook_host,
        webhook_cert=args.webhook_cert,
        webhook_key=args.webhook_key,
        webhook_managed=args.webhook_managed,
        verbose=args.verbose,
        webhook_validate_specs=env("WHETSTONE_WEBHOOK_VALIDATE_SPECS", "true").lower() == "true",
        # Peers of equal priority all pause: each replica draws its own, the highest one acts
        # and a survivor takes over when its peering record expires.
        priority=int(env("WHETSTONE_PRIORITY", "0")) or random.randint(1, 2**30),  # nosec B311 # a peering priority, not a secret
        resync_seconds=args.resync_seconds,
        rollout_resync_seconds=args.rollout_resync_seconds,
        allow_loopback_targets=args.allow_loopback_targets,
        approval_key=read_approval_key(os.environ),
        trainer=trainer_defaults(
            args.trainer_image,
            args.progress_port,
            parse_trainer_defaults(env("WHETSTONE_TRAINER_DEFAULTS", "")),
        ),
    )


# Kubernetes waits 30 s (the default grace period) after SIGTERM before it kills the pod.
STOP_GRACE_SECONDS = 20.0


def _exit_now(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def start_stop_watchdog(
    seconds: float = STOP_GRACE_SECONDS, exit_: Callable[[int], None] = _exit_now
) -> threading.Timer:
    """Exit `seconds` after the operator began stopping, whatever still runs: a reconcile
    stuck in a tenant's endpoint (or any handler thread) must not hold the process past its
    grace period, and with it the peer waiting to take over."""

    def expire() -> None:
        logging.getLogger(__name__).error(
            "still stopping after %gs: exiting with handlers still running", seconds
        )
        exit_(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


@kopf.on.cleanup()
def _on_stop(**_: Any) -> None:
    start_stop_watchdog()


def main(argv: list[str] | None = None) -> int:
    options = _parse(argv)
    handler = logging.StreamHandler()
    if options.log_format == "json":
        handler.setFormatter(JsonFormatter())
    logging.basicConfig(
        level=logging.DEBUG if options.verbose else logging.INFO, handlers=[handler]
    )
    configure(options)
    if options.allow_loopback_targets:
        logging.getLogger(__name__).warning(
            "analysis may reach loopback addresses (--allow-loopback-targets): test clusters only"
        )
    if options.webhook_port:
        from whetstone_operator import webhooks  # noqa: F401  (registers admission handlers)
    kopf.run(
        clusterwide=not options.namespaces,
        namespaces=options.namespaces,
        standalone=not options.peering,
        peering_name=options.peering or None,
        priority=options.priority,
        liveness_endpoint=options.liveness or None,
    )
    return 0


if __name__ == "__main__":
    # Not sys.exit: the interpreter would join every handler thread, a stuck one included.
    _exit_now(main())
