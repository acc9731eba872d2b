"""The HF Trainer as the run drives it: rows as a dataset, a collator that counts training
tokens, TrainingArguments from the resolved hyperparameters."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from whetstone_contract.config import TrainerConfig
from whetstone_trainer.data import Row, as_row, collate
from whetstone_trainer.deepspeed_config import deepspeed_arguments
from whetstone_trainer.prepare import Setup
from whetstone_trainer.progress import ProgressReporter


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


class CountingTrainer(Trainer):
    """The HF Trainer; its collator stops counting tokens while it evaluates (throughput is
    training tokens only)."""

    def __init__(self, *, data_collator: Collator, **kwargs: Any) -> None:
        super().__init__(data_collator=data_collator, **kwargs)
        self.counting_collator = data_collator

    def evaluate(self, *a: Any, **kw: Any) -> Any:
        self.counting_collator.counting = False
        try:
            return super().evaluate(*a, **kw)
        finally:
            self.counting_collator.counting = True


def build_trainer(
    *, model: Any, args: TrainingArguments, setup: Setup, collator: Collator, callbacks: list[Any]
) -> CountingTrainer:
    trainer = CountingTrainer(
        model=model,
        args=args,
        train_dataset=RowDataset(setup.prepared.train_rows),
        eval_dataset=RowDataset([as_row(e) for e in setup.prepared.validation]),
        data_collator=collator,
        callbacks=callbacks,
    )
    # Logs are reported by ProgressCallback (JSON lines, or the bar), not printed as dicts.
    trainer.remove_callback(PrinterCallback)
    return trainer


def training_arguments(
    config: TrainerConfig, setup: Setup, checkpoint_dir: Path, world_size: int
) -> TrainingArguments:
    """TrainingArguments from the resolved hyperparameters (and DeepSpeed's, when asked for)."""
    r = setup.resolved
    kwargs: dict[str, Any] = {}
    if config.deepspeed is not None:
        kwargs = deepspeed_arguments(config.deepspeed, r, setup.model_dir, world_size)
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
        save_total_limit=config.output.keep_checkpoints,
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        prediction_loss_only=True,
        **kwargs,
    )
