"""HF Trainer callbacks: preemption (SIGTERM), checkpoint completion, progress, early stopping."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from whetstone_trainer.checkpoints import CheckpointStore
from whetstone_trainer.distributed import any_rank
from whetstone_trainer.progress import ProgressReporter


class PreemptionCallback(TrainerCallback):
    """On SIGTERM: save a checkpoint at the end of the current step, then stop training."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.preempted = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if any_rank(self.stop.is_set()):
            self.preempted = True
            control.should_save = True
            control.should_training_stop = True
            control.should_evaluate = False
        return control


class CheckpointCallback(TrainerCallback):
    """After the Trainer saved a checkpoint: publish it and write its COMPLETE marker."""

    def __init__(self, store: CheckpointStore, reporter: ProgressReporter | None) -> None:
        self.store = store
        self.reporter = reporter

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        eval_loss = None
        for entry in reversed(state.log_history):
            if "eval_loss" in entry:
                eval_loss = float(entry["eval_loss"])
                break
        self.store.publish(folder, state.global_step, eval_loss)
        if self.reporter is not None:
            self.reporter.set_checkpoints(self.store.published)
        return control


class ProgressCallback(TrainerCallback):
    """Feeds the ProgressReporter (and a tqdm bar when asked)."""

    def __init__(self, reporter: ProgressReporter, *, show_bar: bool = False) -> None:
        self.reporter = reporter
        self.show_bar = show_bar
        self.bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.reporter.mark_start(state.global_step)
        self.reporter.update(
            step=state.global_step,
            total_steps=state.max_steps,
            epoch=float(state.epoch or 0.0),
            force_file=True,
        )
        if self.show_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc="training",
                unit="step",
                dynamic_ncols=True,
            )
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        timing = self.reporter.timing(state.global_step, state.max_steps)
        self.reporter.update(
            step=state.global_step,
            total_steps=state.max_steps,
            epoch=float(state.epoch or 0.0),
            **timing,
        )
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
        return control

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        logs = logs or {}
        fields: dict[str, Any] = {}
        if "loss" in logs:
            fields["loss"] = round(float(logs["loss"]), 6)
        if "eval_loss" in logs:
            fields["eval_loss"] = round(float(logs["eval_loss"]), 6)
        if not self.show_bar:
            print(json.dumps({"step": state.global_step, **logs}, default=str), flush=True)
        if fields:
            progress = self.reporter.update(**fields)
            if self.bar is not None:
                postfix = {"loss": progress.loss}
                if progress.eval_loss is not None:
                    postfix["eval_loss"] = progress.eval_loss
                self.bar.set_postfix(postfix, refresh=False)
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.reporter.update(step=state.global_step, force_file=True)
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        return control


class EarlyStopping(TrainerCallback):
    """Stop when eval_loss has not improved by more than min_delta for `patience` evaluations."""

    def __init__(self, patience: int, min_delta: float) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.bad_evaluations = 0
        self.stopped_at: int | None = None

    def on_evaluate(
        self,
        args: Any,
        state: Any,
        control: Any,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> Any:
        value = (metrics or {}).get("eval_loss")
        if value is None:
            return control
        if self.best is None or value < self.best - self.min_delta:
            self.best = value
            self.bad_evaluations = 0
        else:
            self.bad_evaluations += 1
            if self.bad_evaluations >= self.patience:
                self.stopped_at = state.global_step
                control.should_training_stop = True
        return control
