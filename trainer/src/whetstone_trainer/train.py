"""One fine-tuning run: data -> model -> HF Trainer (+ DeepSpeed) -> evaluation -> artifact.

Layout at the output location:
  data-report.json                     written once the data passed validation
  progress.json                        (file/pvc outputs) the Progress the endpoint serves
  checkpoints/checkpoint-<step>/       HF checkpoints; COMPLETE is written last
  final/                               the artifact (manifest.json, COMPLETE last)
  result.json                          the TrainerResult
Nothing is written there before the data has passed validation. A restarted run resumes
from the newest checkpoint that has its COMPLETE marker. SIGTERM makes the trainer save a
checkpoint at the end of the current step and exit with EXIT_PREEMPTED.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whetstone_trainer import artifact as artifacts
from whetstone_trainer.config import DeepSpeedSettings, TrainerConfig
from whetstone_trainer.data import (
    DataError,
    PreparedData,
    Row,
    TextSplits,
    as_row,
    collate,
    prepare_text,
    text_only_report,
    tokenize_splits,
)
from whetstone_trainer.evaluate import deltas, evaluate_model
from whetstone_trainer.model import (
    ModelError,
    load_base_model,
    load_finetuned,
    load_tokenizer,
    prepare_trainable,
    resolve_model_dir,
)
from whetstone_trainer.progress import ProgressReporter
from whetstone_trainer.result import CheckpointInfo, DataReport, TrainerResult
from whetstone_trainer.storage import (
    LocalLocation,
    Location,
    StorageError,
    open_location,
    split_uri,
)

DEFAULT_SEED = 42
CHECKPOINTS = "checkpoints"
FINAL = "final"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")


class PreemptedError(RuntimeError):
    """SIGTERM arrived: a checkpoint was saved (when training had started)."""

    def __init__(self, step: int, checkpoint: str | None) -> None:
        super().__init__(f"preempted at step {step}; checkpoint: {checkpoint or 'none'}")
        self.step = step
        self.checkpoint = checkpoint


@dataclass
class RunOptions:
    """How this process runs (not part of the job's configuration)."""

    work_dir: Path | None = None
    serve_progress: bool = True
    progress_port: int | None = None
    progress_file: Path | None = None
    show_bar: bool = False
    install_sigterm: bool = True


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
        )


# --- resolved hyperparameters -------------------------------------------------------------


@dataclass
class Resolved:
    """Hyperparameters with every default filled in (recorded in the result)."""

    epochs: float
    max_steps: int | None
    batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    weight_decay: float
    warmup_steps: int
    lr_scheduler: str
    max_seq_length: int
    packing: bool
    seed: int
    steps_per_epoch: int = 0
    total_steps: int = 0
    eval_steps: int = 0
    logging_steps: int = 0
    save_steps: int = 0
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, float | int | str | bool]:
        out: dict[str, float | int | str | bool] = {
            "epochs": self.epochs,
            "batchSize": self.batch_size,
            "gradientAccumulationSteps": self.gradient_accumulation_steps,
            "learningRate": self.learning_rate,
            "weightDecay": self.weight_decay,
            "warmupSteps": self.warmup_steps,
            "lrScheduler": self.lr_scheduler,
            "maxSeqLength": self.max_seq_length,
            "packing": self.packing,
            "seed": self.seed,
            "totalSteps": self.total_steps,
            "evalSteps": self.eval_steps,
            "loggingSteps": self.logging_steps,
            "checkpointEverySteps": self.save_steps,
            "worldSize": self.world_size,
            "device": _device_name(),
        }
        if self.max_steps is not None:
            out["maxSteps"] = self.max_steps
        out.update(self.extra)
        return out


def _device_name() -> str:
    """What the run trains on, recorded with the hyperparameters (e.g. `cuda:NVIDIA H100`)."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def resolve_max_seq_length(config: TrainerConfig, tokenizer: Any, model_dir: Path | None) -> int:
    """maxSeqLength, or the smaller of the tokenizer's and the model's limits (at most 2048)."""
    if config.hyperparameters.max_seq_length is not None:
        return config.hyperparameters.max_seq_length
    limit = 2048
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < limit:
        limit = tok_max
    if model_dir is not None and (model_dir / "config.json").is_file():
        positions = json.loads((model_dir / "config.json").read_text()).get(
            "max_position_embeddings"
        )
        if isinstance(positions, int) and 0 < positions < limit:
            limit = positions
    return limit


def resolve_hyperparameters(config: TrainerConfig, max_seq_length: int) -> Resolved:
    hp = config.hyperparameters
    full = config.method.type == "full"
    return Resolved(
        epochs=hp.epochs if hp.epochs is not None else 3.0,
        max_steps=hp.max_steps,
        batch_size=hp.batch_size or 4,
        gradient_accumulation_steps=hp.gradient_accumulation_steps or 1,
        learning_rate=hp.learning_rate or (2e-5 if full else 2e-4),
        weight_decay=hp.weight_decay if hp.weight_decay is not None else 0.0,
        warmup_steps=hp.warmup_steps if hp.warmup_steps is not None else 0,
        lr_scheduler=hp.lr_scheduler or "linear",
        max_seq_length=max_seq_length,
        packing=bool(hp.packing),
        seed=hp.seed if hp.seed is not None else DEFAULT_SEED,
    )


def plan_steps(resolved: Resolved, config: TrainerConfig, n_rows: int, world_size: int) -> None:
    """Fill in step counts the way the HF Trainer will count them."""
    per_rank = math.ceil(n_rows / world_size)
    batches = math.ceil(per_rank / resolved.batch_size)
    resolved.steps_per_epoch = max(1, math.ceil(batches / resolved.gradient_accumulation_steps))
    resolved.total_steps = resolved.max_steps or max(
        1, math.ceil(resolved.epochs * resolved.steps_per_epoch)
    )
    hp = config.hyperparameters
    resolved.eval_steps = hp.eval_steps or min(resolved.steps_per_epoch, resolved.total_steps)
    resolved.logging_steps = hp.logging_steps or max(1, min(10, resolved.total_steps // 50))
    resolved.save_steps = config.output.checkpoint_every_steps or min(
        resolved.steps_per_epoch, resolved.total_steps
    )
    resolved.world_size = world_size


# --- DeepSpeed ----------------------------------------------------------------------------

# Top-level keys DeepSpeed understands; its parser silently ignores anything else.
DEEPSPEED_TOP_LEVEL_KEYS = frozenset(
    {
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
        "optimizer",
        "scheduler",
        "zero_optimization",
        "bf16",
        "fp16",
        "steps_per_print",
        "wall_clock_breakdown",
        "zero_allow_untested_optimizer",
        "zero_force_ds_cpu_optimizer",
        "communication_data_type",
        "prescale_gradients",
        "gradient_predivide_factor",
        "activation_checkpointing",
        "flops_profiler",
        "tensorboard",
        "wandb",
        "csv_monitor",
        "comms_logger",
        "checkpoint",
        "data_types",
        "memory_breakdown",
        "dump_state",
        "torch_autocast",
        "aio",
        "elasticity",
    }
)


class DeepSpeedConfigError(ValueError):
    """The generated DeepSpeed configuration does not parse."""


def build_deepspeed_config(settings: DeepSpeedSettings) -> dict[str, Any]:
    """The DeepSpeed config for HF's integration ("auto" values are filled from the
    TrainingArguments, so batch sizes and learning rates have one source)."""
    zero: dict[str, Any] = {"stage": settings.zero_stage}
    if settings.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": settings.offload_optimizer}
    if settings.zero_stage >= 2:
        zero.update(
            {"overlap_comm": False, "contiguous_gradients": True, "reduce_bucket_size": "auto"}
        )
    if settings.zero_stage == 3:
        zero.update(
            {
                "offload_param": {"device": settings.offload_param},
                "stage3_gather_16bit_weights_on_model_save": True,
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
            }
        )
    config: dict[str, Any] = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        "bf16": {"enabled": settings.bf16},
        "fp16": {"enabled": settings.fp16},
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }
    if settings.offload_optimizer != "none" or settings.offload_param != "none":
        # Offloaded optimizer state needs DeepSpeed's own (CPU) Adam.
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "weight_decay": "auto", "betas": "auto", "eps": "auto"},
        }
    return config


def check_deepspeed_config(
    config: dict[str, Any],
    *,
    micro_batch: int,
    grad_accum: int,
    world_size: int,
    hidden_size: int = 1024,
) -> None:
    """Reject unknown top-level keys, then run DeepSpeed's own parser on the config with the
    "auto" values filled in as HF would."""
    unknown = sorted(set(config) - DEEPSPEED_TOP_LEVEL_KEYS)
    if unknown:
        raise DeepSpeedConfigError(
            f"unknown DeepSpeed top-level key(s) {unknown}: DeepSpeed would ignore them silently"
        )
    concrete = {
        "train_batch_size": micro_batch * grad_accum * world_size,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": 1.0,
        "reduce_bucket_size": hidden_size * hidden_size,
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "stage3_param_persistence_threshold": 10 * hidden_size,
        "lr": 1e-4,
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
    }

    def fill(node: Any, key: str | None = None) -> Any:
        if isinstance(node, dict):
            return {k: fill(v, k) for k, v in node.items()}
        if node == "auto":
            return concrete[key or ""]
        return node

    try:
        from deepspeed.runtime.config import DeepSpeedConfig
    except ImportError as exc:
        raise DeepSpeedConfigError(
            "resources.deepspeed is set but deepspeed is not installed in this trainer image"
        ) from exc
    filled = fill(config)
    # DeepSpeed derives the global batch from its own view of the world size (1 before the
    # process group exists): let it, rather than fail on a number it cannot see yet.
    filled.pop("train_batch_size", None)
    try:
        DeepSpeedConfig(filled)
    except Exception as exc:
        raise DeepSpeedConfigError(f"DeepSpeed rejected the generated config: {exc}") from exc


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _single_process_rendezvous() -> None:
    """DeepSpeed needs a process group even for one process: give it a loopback one."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


# --- checkpoints --------------------------------------------------------------------------


def _marker_step(marker: Location) -> int | None:
    """The step a checkpoint's COMPLETE marker names; None when it is absent or torn."""
    if not marker.exists():
        return None
    try:
        return int(json.loads(marker.read_text())["step"])
    except (ValueError, KeyError, TypeError):
        return None


def complete_checkpoints(location: Location) -> list[int]:
    """Steps of the checkpoints under `location` whose COMPLETE marker names their own step,
    ascending (an empty or torn marker, left by a crash while it was written, does not count)."""
    steps = []
    for name in location.list_children():
        match = _CHECKPOINT_NAME.match(name)
        if match and _marker_step(location.child(name, artifacts.COMPLETE)) == int(match.group(1)):
            steps.append(int(match.group(1)))
    return sorted(steps)


def _world_barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# --- data for the Trainer -----------------------------------------------------------------


class RowDataset:
    """A list of rows as a map-style dataset."""

    def __init__(self, rows: Sequence[Row]) -> None:
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Row:
        return self.rows[index]


class Collator:
    """Pads rows (see data.collate) and counts training tokens for throughput."""

    def __init__(self, pad_id: int, reporter: ProgressReporter | None, world_size: int = 1) -> None:
        self.pad_id = pad_id
        self.reporter = reporter
        self.world_size = world_size
        self.counting = True

    def __call__(self, rows: Sequence[Row]) -> dict[str, Any]:
        if self.counting and self.reporter is not None:
            # Only rank 0 reports; the other ranks see batches of the same size.
            self.reporter.count_tokens(sum(len(r) for r in rows) * self.world_size)
        return collate(rows, self.pad_id)


# --- the run ------------------------------------------------------------------------------


@dataclass
class Setup:
    """What both validate-only and training compute from the data."""

    splits: TextSplits
    tokenizer: Any
    model_dir: Path | None
    prepared: PreparedData
    resolved: Resolved


def _reader(uri: str) -> bytes:
    try:
        return open_location(uri).read_bytes()
    except StorageError as exc:
        raise DataError(str(exc), DataReport(invalid_lines=[f"{uri}: {exc}"])) from exc


def _tokenizer_only_dir(config: TrainerConfig, splits: TextSplits, cache: Path, seed: int) -> Path:
    """A folder with the base model's tokenizer only (validate-only loads no weights)."""
    scheme, rest = split_uri(config.base_model.uri)
    if scheme == "tiny":
        from whetstone_trainer.model import build_tiny_tokenizer

        return build_tiny_tokenizer(splits.texts(), cache / "tiny-tokenizer")
    if scheme == "hf":
        from huggingface_hub import snapshot_download

        try:
            return Path(
                snapshot_download(
                    repo_id=rest,
                    revision=config.base_model.revision,
                    allow_patterns=["*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja"],
                )
            )
        except Exception as exc:
            raise ModelError(f"cannot fetch the tokenizer of hf://{rest}: {exc}") from exc
    location = open_location(config.base_model.uri)
    if isinstance(location, LocalLocation):
        return location.path
    target = cache / "tokenizer"
    target.mkdir(parents=True, exist_ok=True)
    for rel in location.list_files():
        if not rel.endswith(WEIGHT_SUFFIXES):
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(location.child(rel).read_bytes())
    return target


def prepare(config: TrainerConfig, work_dir: Path, *, load_weights_dir: bool) -> Setup:
    """Data stages plus the tokenizer: raises DataError on bad data (nothing written)."""
    seed = resolve_hyperparameters(config, 0).seed
    splits = prepare_text(config.dataset, _reader, seed)
    if load_weights_dir:
        model_dir: Path | None = resolve_model_dir(
            config.base_model, work_dir, splits.texts(), seed
        )
        tokenizer_dir = model_dir
    else:
        model_dir = None
        tokenizer_dir = _tokenizer_only_dir(config, splits, work_dir, seed)
    assert tokenizer_dir is not None
    tokenizer = load_tokenizer(tokenizer_dir)
    max_len = resolve_max_seq_length(config, tokenizer, model_dir or tokenizer_dir)
    resolved = resolve_hyperparameters(config, max_len)
    prepared = tokenize_splits(
        splits, tokenizer, max_len=max_len, packing=resolved.packing, batch_size=resolved.batch_size
    )
    return Setup(splits, tokenizer, model_dir, prepared, resolved)


def validate_only(config: TrainerConfig, options: RunOptions | None = None) -> DataReport:
    """Data checks and the data report; no model weights are loaded. On success the report
    is also written to the output; on failure (DataError) nothing is written there."""
    options = options or RunOptions()
    with tempfile.TemporaryDirectory(prefix="whetstone-validate-") as tmp:
        work = options.work_dir or Path(tmp)
        try:
            setup = prepare(config, work, load_weights_dir=False)
            report = setup.prepared.report
        except ModelError as exc:
            # Without a tokenizer the text checks still stand; token checks are skipped.
            seed = resolve_hyperparameters(config, 0).seed
            report = text_only_report(prepare_text(config.dataset, _reader, seed))
            print(json.dumps({"warning": f"token checks skipped: {exc}"}), flush=True)
    output = open_location(config.output.uri, kms_key_id=_kms(config))
    output.child("data-report.json").write_text(json.dumps(report.wire(), indent=2) + "\n")
    return report


def _kms(config: TrainerConfig) -> str | None:
    return config.output.encryption.kms_key_id if config.output.encryption else None


class Run:
    """A training run; `execute` returns the result on rank 0 and None on other ranks."""

    def __init__(self, config: TrainerConfig, options: RunOptions | None = None) -> None:
        self.config = config
        self.options = options or RunOptions()
        self.dist = Dist.from_env()
        self.stop = threading.Event()
        self.reporter: ProgressReporter | None = None
        self.output = open_location(config.output.uri, kms_key_id=_kms(config))
        self.remote_checkpoints = self.output.child(CHECKPOINTS)
        self.checkpoints_published: list[CheckpointInfo] = []
        self.bound_port: int | None = None

    # -- signal ----------------------------------------------------------------------------

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.stop.set()

    # -- paths -----------------------------------------------------------------------------

    def _work_dir(self) -> Path:
        base = self.options.work_dir or Path(
            os.environ.get("WHETSTONE_WORK_DIR")
            or Path(tempfile.gettempdir()) / f"whetstone-{self.config.job_name}"
        )
        path = base / f"rank-{self.dist.rank}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _local_checkpoint_dir(self, work: Path) -> Path:
        if isinstance(self.output, LocalLocation):
            return self.output.path / CHECKPOINTS
        return work / CHECKPOINTS

    def _progress_file(self, work: Path) -> Path:
        if self.options.progress_file is not None:
            return self.options.progress_file
        env = os.environ.get("WHETSTONE_PROGRESS_FILE")
        if env:
            return Path(env)
        if isinstance(self.output, LocalLocation):
            return self.output.path / "progress.json"
        return work / "progress.json"

    # -- resume ----------------------------------------------------------------------------

    def find_resume_checkpoint(self, local_dir: Path, work: Path) -> Path | None:
        steps = complete_checkpoints(self.remote_checkpoints)
        if isinstance(self.output, LocalLocation):
            # Leftovers of an interrupted save must not be mistaken for checkpoints.
            leftovers = local_dir.glob("checkpoint-*") if local_dir.is_dir() else []
            for path in leftovers if self.dist.is_main else []:
                match = _CHECKPOINT_NAME.match(path.name)
                if match and int(match.group(1)) not in steps:
                    shutil.rmtree(path, ignore_errors=True)
            return local_dir / f"checkpoint-{steps[-1]}" if steps else None
        if not steps:
            return None
        target = work / "resume" / f"checkpoint-{steps[-1]}"
        if target.exists():
            shutil.rmtree(target)
        self.remote_checkpoints.child(f"checkpoint-{steps[-1]}").download_dir(target)
        (target / artifacts.COMPLETE).unlink(missing_ok=True)
        return target

    def publish_checkpoint(self, local: Path, step: int, eval_loss: float | None) -> None:
        """Mark a saved checkpoint complete (uploading it first when the output is remote)."""
        marker = json.dumps({"step": step, "evalLoss": eval_loss}) + "\n"
        if isinstance(self.output, LocalLocation):
            _world_barrier()
            if self.dist.is_main:
                # Written whole or not at all (temp file + rename).
                self.remote_checkpoints.child(local.name, artifacts.COMPLETE).write_text(marker)
        else:
            remote = self.remote_checkpoints.child(local.name)
            if self.dist.local_rank == 0 and local.is_dir():
                remote.upload_dir(local)
            _world_barrier()
            if self.dist.is_main:
                remote.child(artifacts.COMPLETE).write_text(marker)
                keep = self.config.output.keep_checkpoints
                for old in complete_checkpoints(self.remote_checkpoints)[:-keep]:
                    self.remote_checkpoints.child(f"checkpoint-{old}").delete()
        if self.dist.is_main:
            uri = self.remote_checkpoints.child(local.name).uri
            kept = [c for c in self.checkpoints_published if c.step != step]
            kept.append(CheckpointInfo(step=step, uri=uri, eval_loss=eval_loss))
            self.checkpoints_published = kept[-self.config.output.keep_checkpoints :]

    # -- main ------------------------------------------------------------------------------

    def execute(self) -> TrainerResult | None:
        if self.options.install_sigterm and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)
        work = self._work_dir()
        setup = prepare(self.config, work, load_weights_dir=True)
        assert setup.model_dir is not None
        plan_steps(
            setup.resolved, self.config, len(setup.prepared.train_rows), self.dist.world_size
        )
        if self.stop.is_set():
            raise PreemptedError(0, None)
        # The data is valid: from here on the output may be written.
        if self.dist.is_main:
            self.output.child("data-report.json").write_text(
                json.dumps(setup.prepared.report.wire(), indent=2) + "\n"
            )
            self.reporter = ProgressReporter(self._progress_file(work))
            self.reporter.update(total_steps=setup.resolved.total_steps, force_file=True)
            if self.options.serve_progress:
                port = self.options.progress_port or self.config.progress_port
                self.bound_port = self.reporter.serve(port)
        try:
            return self._train_and_finish(setup, work)
        finally:
            if self.reporter is not None:
                self.reporter.close()

    def _training_arguments(self, setup: Setup, checkpoint_dir: Path) -> Any:
        import torch
        from transformers import TrainingArguments

        r = setup.resolved
        ds = self.config.deepspeed
        kwargs: dict[str, Any] = {}
        if ds is not None:
            os.environ.setdefault(
                "TORCH_EXTENSIONS_DIR",
                str(Path.home() / ".cache" / "whetstone" / "torch_extensions"),
            )
            if "WORLD_SIZE" not in os.environ:
                _single_process_rendezvous()
            ds_config = build_deepspeed_config(ds)
            hidden = 1024
            config_path = setup.model_dir / "config.json" if setup.model_dir else None
            if config_path and config_path.is_file():
                hidden = int(json.loads(config_path.read_text()).get("hidden_size", hidden))
            check_deepspeed_config(
                ds_config,
                micro_batch=r.batch_size,
                grad_accum=r.gradient_accumulation_steps,
                world_size=self.dist.world_size,
                hidden_size=hidden,
            )
            kwargs.update(deepspeed=ds_config, bf16=ds.bf16, fp16=ds.fp16)
        return TrainingArguments(
            output_dir=str(checkpoint_dir),
            per_device_train_batch_size=r.batch_size,
            per_device_eval_batch_size=r.batch_size,
            gradient_accumulation_steps=r.gradient_accumulation_steps,
            num_train_epochs=r.epochs,
            max_steps=r.max_steps if r.max_steps is not None else -1,
            learning_rate=r.learning_rate,
            weight_decay=r.weight_decay,
            warmup_steps=r.warmup_steps,
            lr_scheduler_type=r.lr_scheduler,
            seed=r.seed,
            data_seed=r.seed,
            logging_strategy="steps",
            logging_steps=r.logging_steps,
            eval_strategy="steps",
            eval_steps=r.eval_steps,
            save_strategy="steps",
            save_steps=r.save_steps,
            save_total_limit=self.config.output.keep_checkpoints,
            report_to="none",
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            remove_unused_columns=False,
            label_names=["labels"],
            dataloader_num_workers=0,
            prediction_loss_only=True,
            **kwargs,
        )

    def _train_and_finish(self, setup: Setup, work: Path) -> TrainerResult | None:
        from transformers import Trainer

        from whetstone_trainer.callbacks import (
            CheckpointCallback,
            EarlyStopping,
            PreemptionCallback,
            ProgressCallback,
        )

        config = self.config
        checkpoint_dir = self._local_checkpoint_dir(work)
        resume = self.find_resume_checkpoint(checkpoint_dir, work)
        if self.dist.is_main:
            self.checkpoints_published = [
                CheckpointInfo(step=s, uri=self.remote_checkpoints.child(f"checkpoint-{s}").uri)
                for s in complete_checkpoints(self.remote_checkpoints)
            ]
            if self.reporter is not None:
                self.reporter.set_checkpoints(self.checkpoints_published)
        args = self._training_arguments(setup, checkpoint_dir)
        assert setup.model_dir is not None
        from transformers import set_seed

        # Adapter initialisation draws from the global RNG: seed it before the model exists.
        set_seed(setup.resolved.seed)
        model = prepare_trainable(setup.model_dir, config.method)
        collator = Collator(setup.tokenizer.pad_token_id, self.reporter, self.dist.world_size)
        preemption = PreemptionCallback(self.stop)
        callbacks: list[Any] = [preemption, CheckpointCallback(self)]
        if self.reporter is not None:
            callbacks.append(ProgressCallback(self.reporter, show_bar=self.options.show_bar))
        if config.early_stopping is not None:
            callbacks.append(
                EarlyStopping(config.early_stopping.patience, config.early_stopping.min_delta)
            )

        class _Trainer(Trainer):
            def evaluate(self, *a: Any, **kw: Any) -> Any:
                collator.counting = False
                try:
                    return super().evaluate(*a, **kw)
                finally:
                    collator.counting = True

        trainer = _Trainer(
            model=model,
            args=args,
            train_dataset=RowDataset(setup.prepared.train_rows),
            eval_dataset=RowDataset([as_row(e) for e in setup.prepared.validation]),
            data_collator=collator,
            callbacks=callbacks,
        )
        from transformers.trainer_callback import PrinterCallback

        # Logs are reported by ProgressCallback (JSON lines, or the bar), not printed as dicts.
        trainer.remove_callback(PrinterCallback)
        started = time.monotonic()
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        train_seconds = time.monotonic() - started
        step = trainer.state.global_step
        if preemption.preempted:
            last = self.checkpoints_published[-1].uri if self.checkpoints_published else None
            if self.reporter is not None:
                self.reporter.update(step=step, force_file=True)
            raise PreemptedError(step, last)

        trained = work / "trained"
        trainer.save_model(str(trained))
        _world_barrier()
        if not self.dist.is_main:
            return None
        history = trainer.state.log_history
        del trainer, model
        if config.deepspeed is not None:
            import importlib

            # Under ZeRO-3 every later from_pretrained would build partitioned (empty)
            # parameters: evaluation and the artifact load whole weights on one process.
            importlib.import_module(
                "transformers.integrations.deepspeed"
            ).unset_hf_deepspeed_config()
        return self._finish(setup, work, trained, history, step, train_seconds)

    def _finish(
        self,
        setup: Setup,
        work: Path,
        trained: Path,
        history: list[dict[str, Any]],
        step: int,
        train_seconds: float,
    ) -> TrainerResult:
        config = self.config
        assert setup.model_dir is not None
        evaluation = config.evaluation
        model = load_finetuned(setup.model_dir, trained, config.method)
        tokenizer = setup.tokenizer
        prepared = setup.prepared

        def measure(m: Any, tokenized: Any, examples: Any) -> dict[str, float]:
            return evaluate_model(
                m,
                tokenizer,
                tokenized,
                examples,
                evaluation.metrics,
                max_new_tokens=evaluation.max_new_tokens,
                max_examples=evaluation.max_examples,
            )

        metrics = measure(model, prepared.validation, prepared.validation_examples)
        test_metrics = (
            measure(model, prepared.test, prepared.test_examples) if prepared.test else None
        )
        baseline = None
        if evaluation.compare_to_baseline:
            base = load_base_model(setup.model_dir)
            base.eval()
            baseline = measure(base, prepared.validation, prepared.validation_examples)
            del base

        # Artifact: staged in the work dir, sealed, then published (COMPLETE last).
        staging = work / "artifact"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        fmt = config.output.artifact_format
        if fmt == "merged":
            model.save_pretrained(staging, safe_serialization=True)
        else:
            for name in ("adapter_model.safetensors", "adapter_config.json"):
                shutil.copy2(trained / name, staging / name)
            adapter_config = json.loads((staging / "adapter_config.json").read_text())
            adapter_config["base_model_name_or_path"] = config.base_model.uri
            (staging / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
        tokenizer.save_pretrained(staging)
        train_curve = [(int(h["step"]), float(h["loss"])) for h in history if "loss" in h]
        eval_curve = [(int(h["step"]), float(h["eval_loss"])) for h in history if "eval_loss" in h]
        (staging / artifacts.LOSS_PLOT).write_text(
            artifacts.loss_curve_svg(train_curve, eval_curve)
        )
        lineage: dict[str, Any] = {
            "fineTuneJob": f"{config.namespace}/{config.job_name}",
            "baseModel": config.base_model.uri,
            "method": config.method.type,
            "trainData": config.dataset.train.uri,
            "datasetDigest": prepared.report.dataset_digest or "",
            "trainerImage": os.environ.get("WHETSTONE_TRAINER_IMAGE", "local"),
            "steps": step,
        }
        resolved = setup.resolved.record()
        (staging / artifacts.CARD).write_text(
            artifacts.model_card(
                title=f"{config.job_name} ({config.method.type} on {config.base_model.uri})",
                lineage=lineage,
                hyperparameters=resolved,
                data_report=prepared.report.wire(),
                metrics=metrics,
                baseline=baseline,
                test_metrics=test_metrics,
                artifact_format=fmt,
            )
        )
        digest = artifacts.seal(
            staging,
            {
                "artifactFormat": fmt,
                "baseModel": config.base_model.uri,
                "fineTuneJob": lineage["fineTuneJob"],
                "datasetDigest": prepared.report.dataset_digest,
            },
        )
        final = self.output.child(FINAL)
        artifacts.publish(staging, final)

        all_metrics: dict[str, float | dict[str, float]] = dict(metrics)
        if train_curve:
            all_metrics["trainLoss"] = train_curve[-1][1]
            all_metrics["initialTrainLoss"] = train_curve[0][1]
        all_metrics["trainSeconds"] = round(train_seconds, 2)
        if baseline is not None:
            all_metrics["baseline"] = baseline
            all_metrics["delta"] = deltas(metrics, baseline)
        if test_metrics:
            all_metrics["test"] = test_metrics
        result = TrainerResult(
            artifact_uri=final.uri.rstrip("/") + "/",
            artifact_format=fmt,
            manifest_digest=digest,
            metrics=all_metrics,
            data_report=prepared.report,
            hyperparameters=resolved,
            steps=step,
        )
        self.output.child("result.json").write_text(
            result.model_dump_json(by_alias=True, exclude_none=True, indent=2) + "\n"
        )
        if self.reporter is not None:
            self.reporter.update(
                step=step, percent=100, eta=None, eval_loss=metrics.get("evalLoss"), force_file=True
            )
        return result


def run(config: TrainerConfig, options: RunOptions | None = None) -> TrainerResult | None:
    """Train, evaluate and publish; returns the result on rank 0 (None on other ranks)."""
    return Run(config, options).execute()
