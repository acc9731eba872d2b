"""What both validate-only and training compute from the config: the data (validated,
tokenised, packed), the tokenizer, the base model's folder and the resolved hyperparameters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whetstone_contract.config import TrainerConfig
from whetstone_contract.result import DataReport
from whetstone_trainer.data import (
    DataError,
    PreparedData,
    TextSplits,
    prepare_text,
    tokenize_splits,
)
from whetstone_trainer.hyperparams import (
    Resolved,
    resolve_hyperparameters,
    resolve_max_seq_length,
)
from whetstone_trainer.model import ModelError, load_tokenizer, resolve_model_dir
from whetstone_trainer.storage import (
    LocalLocation,
    Location,
    StorageError,
    open_location,
    split_uri,
)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")


@dataclass
class Setup:
    """What both validate-only and training compute from the data."""

    splits: TextSplits
    tokenizer: Any
    model_dir: Path | None
    prepared: PreparedData
    resolved: Resolved


def read_input(uri: str) -> bytes:
    """An input file's bytes; unreadable input is bad data (a DataError), not a crash."""
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
    splits = prepare_text(config.dataset, read_input, seed)
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


def open_output(config: TrainerConfig) -> Location:
    """The run's output location (encrypted with the job's KMS key where it has one)."""
    kms = config.output.encryption.kms_key_id if config.output.encryption else None
    return open_location(config.output.uri, kms_key_id=kms)
