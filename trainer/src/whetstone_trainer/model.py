"""Base models: where they come from (file/pvc/s3/hf/tiny) and how they are made trainable.

`tiny://llama` builds a small Llama from the (already redacted) training text: a byte-level
BPE tokenizer, a chat template whose assistant turns are marked with {% generation %} so
the tokenizer returns an assistant-only mask, and a 2-layer model. It is saved with
`save_pretrained` and loaded back through the same path as any other model.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from whetstone_contract.config import LoraSettings, MethodSpec, ModelSource
from whetstone_trainer.storage import StorageError, fetch_to_local, split_uri


def _module(name: str) -> Any:
    """A library module as Any: some of its callables carry no annotations."""
    return importlib.import_module(name)


class ModelError(RuntimeError):
    """The base model cannot be obtained or prepared; the message says what to change."""


TINY_SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|assistant|>\n"
    "{% generation %}{{ m['content'] }}<|end|>{% endgeneration %}\n"
    "{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TINY_VOCAB_SIZE = 1024
TINY_MAX_POSITIONS = 1024


def build_tiny_tokenizer(texts: Sequence[str], target: Path) -> Path:
    """Train the tiny byte-level BPE tokenizer (with its chat template) on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    fast = _module("transformers").PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|bos|>",  # nosec B106 # a token of the tiny tokenizer, not a password
        eos_token="<|end|>",
        pad_token="<|pad|>",
        chat_template=TINY_CHAT_TEMPLATE,
        model_max_length=TINY_MAX_POSITIONS,
    )
    target.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(target)
    return target


def build_tiny_model(texts: Sequence[str], target: Path, *, seed: int = 0) -> Path:
    """Build the tiny Llama and its tokenizer from `texts` into `target`; returns `target`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    build_tiny_tokenizer(texts, target)
    tokenizer = AutoTokenizer.from_pretrained(target)  # nosec B615 # a local directory, built just above
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=TINY_MAX_POSITIONS,
        # The default 0.02 leaves LoRA-only training stuck near loss 5 on this model.
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    # Seed a private generator state so building the model leaves global RNG untouched.
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    torch.random.set_rng_state(generator_state)
    model.save_pretrained(target)
    return target


def resolve_model_dir(
    source: ModelSource, cache: Path, texts: Sequence[str] | None = None, seed: int = 0
) -> Path:
    """A local folder with the base model's weights, config and tokenizer."""
    scheme, rest = split_uri(source.uri)
    if scheme == "tiny":
        if texts is None:
            raise ModelError("tiny:// models are built from the training data: none was given")
        return build_tiny_model(texts, cache / "tiny-model", seed=seed)
    if scheme == "hf":
        return _hf_snapshot(rest, source.revision, cache)
    try:
        return fetch_to_local(source.uri, cache / "base-model")
    except StorageError as exc:
        raise ModelError(f"baseModel.uri {source.uri}: {exc}") from exc


def _hf_snapshot(repo_id: str, revision: str | None, cache: Path) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - a transformers dependency
        raise ModelError("hf:// models need huggingface_hub") from exc
    try:
        # HF_TOKEN from the environment (a Secret) is picked up by huggingface_hub.
        return Path(snapshot_download(repo_id=repo_id, revision=revision))
    except Exception as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
        raise ModelError(
            f"cannot load hf://{repo_id}: "
            + (
                "HF_HUB_OFFLINE is set and "
                if offline
                else "the Hugging Face Hub is unreachable or refused the request, and "
            )
            + "the model is not in the local cache. Mirror it to s3:// or pvc:// and set "
            "baseModel.uri there, or give the pod access to the Hub (and a token via "
            f"baseModel.secretRef for gated models). Cause: {type(exc).__name__}: {exc}"
        ) from exc


def load_tokenizer(model_dir: Path) -> Any:
    """The model's tokenizer, with a pad token (the eos token when the model has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)  # nosec B615 # a local directory (hf:// models are downloaded to one first)
    except Exception as exc:
        raise ModelError(f"cannot load a tokenizer from {model_dir}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            f"the tokenizer in {model_dir} has no chat template: use an instruction-tuned "
            "base model, or one whose tokenizer_config.json carries chat_template"
        )
    return tokenizer


def has_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        return False
    return True


def _lora_config(settings: LoraSettings) -> Any:
    from peft import LoraConfig

    targets: str | list[str] = list(settings.target_modules)
    if targets == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )


def load_base_model(model_dir: Path, *, dtype: Any = None, quantize_4bit: bool = False) -> Any:
    """AutoModelForCausalLM from a local folder (optionally 4-bit NF4 via bitsandbytes)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
    if quantize_4bit:
        if not has_bitsandbytes():
            raise ModelError(
                "method.type qlora needs the bitsandbytes package, which is not installed "
                "in this trainer image: install bitsandbytes or use method.type lora"
            )
        kwargs["quantization_config"] = _module("transformers").BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype or torch.float32,
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)  # nosec B615 # a local directory (hf:// models are downloaded to one first)
    except Exception as exc:
        raise ModelError(f"cannot load a causal LM from {model_dir}: {exc}") from exc
    model.config.use_cache = False
    return model


def prepare_trainable(model_dir: Path, method: MethodSpec, *, dtype: Any = None) -> Any:
    """The model to train: full weights, or the base wrapped with LoRA adapters."""
    model = load_base_model(model_dir, dtype=dtype, quantize_4bit=method.type == "qlora")
    if method.type == "full":
        return model
    from peft import get_peft_model

    assert method.lora is not None
    if method.type == "qlora":
        model = _module("peft").prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=False
        )
    return get_peft_model(model, _lora_config(method.lora))


def load_finetuned(base_dir: Path, saved_dir: Path, method: MethodSpec) -> Any:
    """Reload a trained model from disk in full precision; LoRA adapters are merged in."""
    if method.type == "full":
        model = load_base_model(saved_dir)
    else:
        from peft import PeftModel

        base = load_base_model(base_dir)
        model = PeftModel.from_pretrained(base, saved_dir).merge_and_unload()
    model.eval()
    return model
