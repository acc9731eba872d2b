"""One fine-tuning run: data -> model -> HF Trainer (+ DeepSpeed) -> evaluation -> artifact.

Layout at the output location:
  data-report.json                     written once the data passed validation
  progress.json                        (file/pvc outputs) the Progress the endpoint serves
  checkpoints/checkpoint-<step>/       HF checkpoints; COMPLETE is written last
  final/                               the artifact (manifest.json, COMPLETE last)
  result.json                          the TrainerResult
Nothing is written there before the data has passed validation. A restarted run resumes
from the newest checkpoint that has its COMPLETE marker, read as data only (no pickled code
runs: checkpoints.data_only_loads). SIGTERM makes the trainer save a checkpoint at the end
of the current step and exit with EXIT_PREEMPTED.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whetstone_contract.config import TrainerConfig
from whetstone_contract.result import DataReport, TrainerResult
from whetstone_trainer.checkpoints import CheckpointStore, data_only_loads
from whetstone_trainer.data import prepare_text, text_only_report
from whetstone_trainer.distributed import Dist, world_barrier
from whetstone_trainer.hyperparams import plan_steps, resolve_hyperparameters
from whetstone_trainer.model import ModelError, prepare_trainable
from whetstone_trainer.prepare import Setup, open_output, prepare, read_input
from whetstone_trainer.progress import ProgressReporter
from whetstone_trainer.publish import TrainedModel, evaluate_and_publish
from whetstone_trainer.storage import LocalLocation


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
            report = text_only_report(prepare_text(config.dataset, read_input, seed))
            print(json.dumps({"warning": f"token checks skipped: {exc}"}), flush=True)
    output = open_output(config)
    output.child("data-report.json").write_text(json.dumps(report.wire(), indent=2) + "\n")
    return report


def _leave_deepspeed() -> None:
    import importlib

    # Under ZeRO-3 every later from_pretrained would build partitioned (empty) parameters:
    # evaluation and the artifact load whole weights on one process.
    importlib.import_module("transformers.integrations.deepspeed").unset_hf_deepspeed_config()


class Run:
    """A training run; `execute` returns the result on rank 0 and None on other ranks."""

    def __init__(self, config: TrainerConfig, options: RunOptions | None = None) -> None:
        self.config = config
        self.options = options or RunOptions()
        self.dist = Dist.from_env()
        self.stop = threading.Event()
        self.reporter: ProgressReporter | None = None
        self.output = open_output(config)
        self.checkpoints = CheckpointStore(self.output, self.dist, config.output.keep_checkpoints)
        self.bound_port: int | None = None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.stop.set()

    def _work_dir(self) -> Path:
        base = self.options.work_dir or Path(
            os.environ.get("WHETSTONE_WORK_DIR")
            or Path(tempfile.gettempdir()) / f"whetstone-{self.config.job_name}"
        )
        path = base / f"rank-{self.dist.rank}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _progress_file(self, work: Path) -> Path:
        if self.options.progress_file is not None:
            return self.options.progress_file
        env = os.environ.get("WHETSTONE_PROGRESS_FILE")
        if env:
            return Path(env)
        if isinstance(self.output, LocalLocation):
            return self.output.path / "progress.json"
        return work / "progress.json"

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
            self._start_reporting(setup, work)
        try:
            trained = self._train(setup, work)
            if trained is None:
                return None
            result = evaluate_and_publish(self.config, trained, work, self.output)
            if self.reporter is not None:
                eval_loss = result.metrics.get("evalLoss")
                self.reporter.update(
                    step=trained.steps,
                    percent=100,
                    eta=None,
                    eval_loss=None if isinstance(eval_loss, dict) else eval_loss,
                    force_file=True,
                )
            return result
        finally:
            if self.reporter is not None:
                self.reporter.close()

    def _start_reporting(self, setup: Setup, work: Path) -> None:
        """The data report at the output, then progress: in its file and (asked) over HTTP."""
        self.output.child("data-report.json").write_text(
            json.dumps(setup.prepared.report.wire(), indent=2) + "\n"
        )
        self.reporter = ProgressReporter(self._progress_file(work))
        self.reporter.update(total_steps=setup.resolved.total_steps, force_file=True)
        if self.options.serve_progress:
            port = self.options.progress_port or self.config.progress_port
            self.bound_port = self.reporter.serve(port)

    def _callbacks(self, preemption: Any) -> list[Any]:
        from whetstone_trainer.callbacks import CheckpointCallback, EarlyStopping, ProgressCallback

        callbacks: list[Any] = [preemption, CheckpointCallback(self.checkpoints, self.reporter)]
        if self.reporter is not None:
            callbacks.append(ProgressCallback(self.reporter, show_bar=self.options.show_bar))
        early = self.config.early_stopping
        if early is not None:
            callbacks.append(EarlyStopping(early.patience, early.min_delta))
        return callbacks

    def _train(self, setup: Setup, work: Path) -> TrainedModel | None:
        """Train, resuming from the newest complete checkpoint; on SIGTERM a checkpoint is
        saved and PreemptedError raised. Returns what rank 0 evaluates (None elsewhere)."""
        from transformers import set_seed

        from whetstone_trainer.callbacks import PreemptionCallback
        from whetstone_trainer.hf_trainer import Collator, build_trainer, training_arguments

        checkpoint_dir = self.checkpoints.local_dir(work)
        resume = self.checkpoints.find_resume(checkpoint_dir, work)
        if self.dist.is_main:
            published = self.checkpoints.load_published()
            if self.reporter is not None:
                self.reporter.set_checkpoints(published)
        args = training_arguments(self.config, setup, checkpoint_dir, self.dist.world_size)
        assert setup.model_dir is not None
        # Adapter initialisation draws from the global RNG: seed it before the model exists.
        set_seed(setup.resolved.seed)
        model = prepare_trainable(setup.model_dir, self.config.method)
        collator = Collator(setup.tokenizer.pad_token_id, self.reporter, self.dist.world_size)
        preemption = PreemptionCallback(self.stop)
        trainer = build_trainer(
            model=model,
            args=args,
            setup=setup,
            collator=collator,
            callbacks=self._callbacks(preemption),
        )
        started = time.monotonic()
        with data_only_loads(deepspeed=self.config.deepspeed is not None):
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        train_seconds = time.monotonic() - started
        step = trainer.state.global_step
        if preemption.preempted:
            published = self.checkpoints.published
            if self.reporter is not None:
                self.reporter.update(step=step, force_file=True)
            raise PreemptedError(step, published[-1].uri if published else None)
        trained = work / "trained"
        trainer.save_model(str(trained))
        world_barrier()
        if not self.dist.is_main:
            return None
        history = trainer.state.log_history
        del trainer, model
        if self.config.deepspeed is not None:
            _leave_deepspeed()
        return TrainedModel(setup, trained, history, step, train_seconds)


def run(config: TrainerConfig, options: RunOptions | None = None) -> TrainerResult | None:
    """Train, evaluate and publish; returns the result on rank 0 (None on other ranks)."""
    return Run(config, options).execute()
