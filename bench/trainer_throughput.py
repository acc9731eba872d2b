"""Trainer throughput: the project's data pipeline against a plain HF Trainer baseline.

One run, one model, one length-skewed chat dataset (lognormal lengths, long tail up to
maxSeqLength), generated here deterministically. Each variant trains one epoch over the same
examples with the same optimizer, learning rate and loss-bearing (assistant) tokens, in a
fresh subprocess so that its peak RSS is its own:

  padded   plain HF Trainer: one example per row, DataCollatorForSeq2Seq pads each batch to
           its longest example, random sampler, attention_mask; loss on assistant tokens
  packed   whetstone_trainer: prepare() (chat template, assistant-only labels, first-fit-
           decreasing packing to maxSeqLength), RowDataset and Collator from hf_trainer.py
  grouped  (optional) padded with HF's length-grouped sampler

`packed` takes as many rows per step as hold `--batch-size` examples on average, so both
variants make (nearly) the same number of optimizer steps. Rates are counted after
`--skip-steps` warm-up steps; of `--repeats` interleaved runs the fastest is kept. A table
is printed and JSON written to bench/results/trainer_throughput*.json.

    .venv/bin/python bench/trainer_throughput.py
    python bench/trainer_throughput.py --device cuda --model-size small --method full
    python bench/trainer_throughput.py --device cuda --model-size 1b --method full  # MFU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "trainer" / "src"))

IGNORE_INDEX = -100
VARIANTS = ("padded", "packed", "grouped")
TARGET_WASTE = 2.0
TARGET_RATIO = 1.8
# Lengths as a fraction of maxSeqLength: lognormal median and log-std. Gives p50 ~0.16,
# mean ~0.23, p95 ~0.7 of maxSeqLength and a few percent of examples near it.
MEDIAN_FRACTION = 0.17
LOG_SIGMA = 0.9
# Tokens per generated word with the tiny BPE (punctuation and split words included).
TOKENS_PER_WORD = 1.12

_WORD_TEXT = """
the a of to and in is it for on that with as be this you are can by or at from not have
your use will an we if but all one more when which run pod job node data model train step
loss batch token cluster image store value check set file time log error need first each
new other any some then only also should must may into over after before config service
secret volume network request limit memory disk cache queue event status update rollout
canary metric alert build test deploy release version key name label window shard replica
leader follower retry timeout backoff signal handler
"""
WORDS = _WORD_TEXT.split()
WORD_WEIGHTS = [1 / (rank + 1) ** 0.8 for rank in range(len(WORDS))]

SIZES: dict[str, dict[str, int]] = {
    # The project's own tiny model (model.build_tiny_model).
    "tiny": {"max_seq_length": 512, "examples": 1200},
    # ~100M parameters, random weights.
    "small": {
        "max_seq_length": 2048,
        "examples": 4000,
        "hidden_size": 768,
        "intermediate_size": 2560,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
    },
    # Llama-3.2-1B's layers (about 1.0B parameters with the data-trained vocabulary), random
    # weights: model FLOPs utilisation depends on the shape, not on what the weights learned.
    "1b": {
        "max_seq_length": 2048,
        "examples": 2000,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
    },
}
# Dense bf16 peak TFLOP/s by device name, for model FLOPs utilisation.
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0}


# --- the dataset --------------------------------------------------------------------------


def _sentences(rng: random.Random, n_words: int) -> str:
    out = []
    while n_words > 0:
        k = min(n_words, rng.randint(6, 16))
        n_words -= k
        words = rng.choices(WORDS, WORD_WEIGHTS, k=k)
        words[0] = words[0].capitalize()
        out.append(" ".join(words) + ".")
    return " ".join(out)


def _conversation(rng: random.Random, target_tokens: int) -> dict[str, Any]:
    messages = []
    budget = target_tokens / TOKENS_PER_WORD - 1
    if rng.random() < 0.5:
        k = rng.randint(6, 16)
        messages.append({"role": "system", "content": _sentences(rng, k)})
        budget -= k + 4
    turns = 1 if budget < 120 else rng.randint(1, 3)
    for _ in range(turns):
        words = max(8.0, budget / turns - 8)
        user = max(3, int(words * rng.uniform(0.15, 0.45)))
        messages.append({"role": "user", "content": _sentences(rng, user)})
        messages.append(
            {"role": "assistant", "content": _sentences(rng, max(2, int(words) - user))}
        )
    return {"messages": messages}


def make_dataset(n: int, max_len: int, seed: int) -> list[dict[str, Any]]:
    """n chat examples whose token lengths follow a clipped lognormal (deterministic)."""
    rng = random.Random(seed)
    mu = math.log(MEDIAN_FRACTION * max_len)
    return [
        _conversation(rng, min(max_len - 8, max(16, int(rng.lognormvariate(mu, LOG_SIGMA)))))
        for _ in range(n)
    ]


def write_jsonl(path: Path, examples: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))


def build_model(work: Path, size: str, max_len: int, seed: int) -> Path:
    """The model both variants load: tokenizer trained on the data, random weights."""
    from whetstone_contract.config import DatasetSpec
    from whetstone_trainer.data import prepare_text
    from whetstone_trainer.model import build_tiny_model, build_tiny_tokenizer

    spec = DatasetSpec.model_validate(
        {"train": {"uri": f"file://{work}/train.jsonl"}, "validationSplit": 0.1}
    )
    splits = prepare_text(spec, lambda uri: Path(uri.removeprefix("file://")).read_bytes(), seed)
    target = work / "model"
    if size == "tiny":
        return build_tiny_model(splits.texts(), target, seed=0)

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    build_tiny_tokenizer(splits.texts(), target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    tokenizer.model_max_length = max_len
    tokenizer.save_pretrained(target)
    shape: dict[str, Any] = {
        k: v for k, v in SIZES[size].items() if k not in ("max_seq_length", "examples")
    }
    shape.setdefault("num_key_value_heads", shape["num_attention_heads"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_len,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **shape,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(target)
    return target


# --- one variant (child process) ----------------------------------------------------------


@dataclass
class Spec:
    variant: str
    work: str
    model_dir: str
    device: str
    method: str
    batch_size: int
    max_seq_length: int
    learning_rate: float
    seed: int
    threads: int
    skip_steps: int
    profile_steps: int = 0


class Meter:
    """Wraps a collator: counts real, padded and loss-bearing positions and collate time."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[tuple[int, int, int]] = []  # (supervised, real, positions)
        self.seconds = 0.0

    def __call__(self, features: list[Any]) -> dict[str, Any]:
        real = sum(len(f["input_ids"]) if isinstance(f, dict) else len(f) for f in features)
        started = time.perf_counter()
        batch = self.inner(features)
        self.seconds += time.perf_counter() - started
        labels = batch["labels"]
        # Position 0 of each row has no prediction: the loss shifts labels by one.
        supervised = int((labels[:, 1:] != IGNORE_INDEX).sum())
        self.batches.append((supervised, real, int(batch["input_ids"].numel())))
        return dict(batch)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _method(name: str) -> Any:
    from whetstone_contract.config import MethodSpec

    if name == "full":
        return MethodSpec(type="full")
    return MethodSpec.model_validate({"type": "lora", "lora": {"r": 16, "alpha": 32}})


def _padded_data(spec: Spec) -> tuple[list[dict[str, list[int]]], Any, int]:
    """The plain path: chat template with the assistant mask, one example per row."""
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    tokenizer = AutoTokenizer.from_pretrained(spec.model_dir)
    features = []
    for line in (Path(spec.work) / "train.jsonl").read_text().splitlines():
        out: Any = tokenizer.apply_chat_template(
            json.loads(line)["messages"],
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        ids = list(out["input_ids"])
        if len(ids) > spec.max_seq_length:
            continue
        labels = [
            t if m else IGNORE_INDEX for t, m in zip(ids, out["assistant_masks"], strict=True)
        ]
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX)
    return features, collator, spec.batch_size


def _packed_data(spec: Spec) -> tuple[Any, Any, int]:
    """The project's path: prepare() with packing, then hf_trainer.py's dataset and collator."""
    from whetstone_contract.config import TrainerConfig
    from whetstone_trainer.hf_trainer import Collator, RowDataset
    from whetstone_trainer.prepare import prepare

    work = Path(spec.work)
    config = TrainerConfig.model_validate(
        {
            "jobName": "bench",
            "namespace": "default",
            "baseModel": {"uri": f"file://{spec.model_dir}"},
            "dataset": {
                "train": {"uri": f"file://{work}/train.jsonl"},
                "validation": {"uri": f"file://{work}/validation.jsonl"},
            },
            "method": _method(spec.method).model_dump(by_alias=True, exclude_none=True),
            "hyperparameters": {
                "batchSize": spec.batch_size,
                "maxSeqLength": spec.max_seq_length,
                "packing": True,
                "seed": spec.seed,
            },
            "output": {"uri": f"file://{work}/out-packed/"},
        }
    )
    setup = prepare(config, work / "packed", load_weights_dir=True)
    rows = setup.prepared.train_rows
    examples = setup.prepared.report.examples or len(rows)
    # As many rows per step as hold batch_size examples on average.
    rows_per_step = max(1, round(spec.batch_size * len(rows) / examples))
    return RowDataset(rows), Collator(setup.tokenizer.pad_token_id, None), rows_per_step


def _training_arguments(spec: Spec, batch: int, out: Path) -> Any:
    import dataclasses

    from transformers import TrainingArguments

    kwargs: dict[str, Any] = {}
    if spec.variant == "grouped":
        names = {f.name for f in dataclasses.fields(TrainingArguments)}
        if "train_sampling_strategy" in names:
            kwargs["train_sampling_strategy"] = "group_by_length"
        else:
            kwargs["group_by_length"] = True
    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        num_train_epochs=1,
        max_steps=spec.profile_steps or -1,
        learning_rate=spec.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        seed=spec.seed,
        data_seed=spec.seed,
        logging_strategy="steps",
        logging_steps=10,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=spec.device == "cpu",
        bf16=spec.device == "cuda",
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        dataloader_pin_memory=spec.device == "cuda",
        **kwargs,
    )


def run_variant(spec: Spec) -> dict[str, Any]:
    import torch

    torch.set_num_threads(spec.threads)
    from transformers import Trainer, TrainerCallback, set_seed
    from transformers.trainer_callback import PrinterCallback

    from whetstone_trainer.model import prepare_trainable

    started = time.perf_counter()
    if spec.variant == "packed":
        dataset, collator, batch = _packed_data(spec)
    else:
        dataset, collator, batch = _padded_data(spec)
    prep_s = time.perf_counter() - started
    set_seed(spec.seed)
    model = prepare_trainable(Path(spec.model_dir), _method(spec.method))
    params = sum(p.numel() for p in model.parameters())
    meter = Meter(collator)
    cuda = spec.device == "cuda"
    step_ends: list[float] = []
    cpu_ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            step_ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())

    out = Path(spec.work) / f"out-{spec.variant}"
    trainer = Trainer(
        model=model,
        args=_training_arguments(spec, batch, out),
        train_dataset=dataset,
        data_collator=meter,
        callbacks=[StepClock()],
    )
    trainer.remove_callback(PrinterCallback)
    rss_before = _rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    profile_table = None
    t0, cpu0 = time.perf_counter(), time.process_time()
    if spec.profile_steps:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            output = trainer.train()
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        profile_table = prof.key_averages().table(sort_by=sort, row_limit=15)
    else:
        output = trainer.train()
    train_s = time.perf_counter() - t0

    steps = len(step_ends)
    durations = [b - a for a, b in zip([t0, *step_ends], step_ends, strict=False)]
    skip = spec.skip_steps if steps > spec.skip_steps else 0
    window = meter.batches[skip:steps]
    steady_s = step_ends[-1] - (step_ends[skip - 1] if skip else t0)
    # CPU time of this process (all its threads): time slices lost to neighbours don't count.
    steady_cpu_s = cpu_ends[-1] - (cpu_ends[skip - 1] if skip else cpu0)
    supervised = sum(b[0] for b in meter.batches)
    real = sum(b[1] for b in meter.batches)
    positions = sum(b[2] for b in meter.batches)
    steady_supervised = sum(b[0] for b in window)
    steady_real = sum(b[1] for b in window)
    result: dict[str, Any] = {
        "variant": spec.variant,
        "steps": steps,
        "rows_per_step": batch,
        "rows": len(dataset),
        "parameters": params,
        "supervised_tokens": supervised,
        "real_tokens": real,
        "positions": positions,
        "padding_waste_percent": round(100 * (positions - real) / positions, 2),
        "supervised_tokens_per_s": round(steady_supervised / steady_s, 1),
        "real_tokens_per_s": round(steady_real / steady_s, 1),
        "supervised_tokens_per_cpu_s": round(steady_supervised / steady_cpu_s, 1),
        "steady_steps": len(window),
        "steady_s": round(steady_s, 3),
        "steady_cpu_s": round(steady_cpu_s, 3),
        "train_s": round(train_s, 3),
        "prep_s": round(prep_s, 3),
        "collate_s": round(meter.seconds, 3),
        "step_s_p50": round(statistics.median(durations), 4),
        "step_s_max": round(max(durations), 4),
        "train_loss": round(float(output.training_loss), 4),
        "rss_before_train_mb": round(rss_before, 1),
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if cuda:
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if spec.method == "full":
            # 6 * parameters per real token (forward + backward), attention not counted.
            tflops = 6 * params * steady_real / steady_s / 1e12
            result["model_tflops"] = round(tflops, 2)
            name = torch.cuda.get_device_name()
            peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
            if peak is not None:
                result["mfu_percent"] = round(100 * tflops / peak, 2)
    if profile_table is not None:
        result["profile"] = profile_table
    return result


# --- the parent ---------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return str(torch.cuda.get_device_name(0))
    return f"cpu: {_cpu_model()}"


def _child(spec: Spec) -> dict[str, Any]:
    env = dict(os.environ)
    threads = str(spec.threads)
    env.update(
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(asdict(spec))],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
            result["process_s"] = round(wall, 2)
            return result
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
    raise SystemExit(f"variant {spec.variant} failed (exit {proc.returncode})")


def _token_stats(model_dir: Path, work: Path) -> dict[str, float]:
    from transformers import AutoTokenizer

    from whetstone_trainer.data import Example, token_stats, tokenize_example

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths, supervised = [], 0
    for line in (work / "train.jsonl").read_text().splitlines():
        tokenized = tokenize_example(tokenizer, Example(json.loads(line)["messages"], {}, "", 0))
        lengths.append(len(tokenized))
        supervised += sum(label != IGNORE_INDEX for label in tokenized.labels)
    stats = token_stats(lengths)
    stats["assistant_fraction"] = round(supervised / sum(lengths), 3)
    return stats


def _table(results: dict[str, dict[str, Any]], cuda: bool) -> str:
    head = [
        "variant",
        "steps",
        "rows/step",
        "sup tokens",
        "pad waste %",
        "sup tok/s",
        "train s",
        "process s",
        "peak RSS MB",
    ]
    head.insert(6, "peak GPU MB" if cuda else "sup tok/CPU-s")
    head.append("loss")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        cells = [
            name,
            str(r["steps"]),
            str(r["rows_per_step"]),
            str(r["supervised_tokens"]),
            f"{r['padding_waste_percent']:.1f}",
            f"{r['supervised_tokens_per_s']:,.0f}",
            f"{r['train_s']:.1f}",
            f"{r['process_s']:.1f}",
            f"{r['peak_rss_mb']:.0f}",
        ]
        extra = r.get("peak_gpu_mb", 0) if cuda else r["supervised_tokens_per_cpu_s"]
        cells.insert(6, f"{extra:,.0f}")
        cells.append(f"{r['train_loss']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _best_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run: a busy neighbour only ever slows a run down (all runs are kept)."""
    return max(runs, key=lambda r: r["supervised_tokens_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model-size", choices=list(SIZES), default="tiny")
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--examples", type=int, help="training examples (default per size)")
    parser.add_argument("--max-seq-length", type=int, help="maxSeqLength (default per size)")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per step")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, help="torch threads (cpu 1, cuda all cores)")
    parser.add_argument("--variants", default="padded,packed", help=f"from {','.join(VARIANTS)}")
    parser.add_argument(
        "--repeats", type=int, help="runs per variant, interleaved, fastest kept (cpu 3, cuda 1)"
    )
    parser.add_argument("--skip-steps", type=int, default=3, help="warm-up steps left out")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--profile", type=int, default=0, help="then profile N steps of a variant")
    parser.add_argument("--profile-variant", choices=VARIANTS, default="packed")
    parser.add_argument("--json", type=Path, help="output (default bench/results/...)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print("RESULT " + json.dumps(run_variant(Spec(**json.loads(args.child)))), flush=True)
        return

    variants = [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}")
    cpu = args.device == "cpu"
    repeats = args.repeats or (3 if cpu else 1)
    # One thread on CPU: the tiny model gains nothing from a second one, and a single thread
    # keeps its speed when neighbours share the machine (two threads wait on each other).
    threads = args.threads or (1 if cpu else len(os.sched_getaffinity(0)))
    size = SIZES[args.model_size]
    max_len = args.max_seq_length or size["max_seq_length"]
    n_examples = args.examples or size["examples"]
    if args.model_size == "tiny" and max_len > 1024:
        parser.error("the tiny model has 1024 positions")
    suffix = (
        ""
        if (args.device, args.model_size) == ("cpu", "tiny")
        else (f"-{args.device}-{args.model_size}")
    )
    json_path = args.json or REPO / "bench" / "results" / f"trainer_throughput{suffix}.json"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    import transformers

    device_name = _device_name(args.device)
    print(f"device: {device_name}; threads: {threads}; torch {torch.__version__}", flush=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="whetstone-bench-") as tmp:
        work = Path(tmp)
        write_jsonl(work / "train.jsonl", make_dataset(n_examples, max_len, args.seed))
        write_jsonl(work / "validation.jsonl", make_dataset(32, max_len, args.seed + 1))
        model_dir = build_model(work, args.model_size, max_len, args.seed)
        stats = _token_stats(model_dir, work)
        print(f"dataset: {n_examples} examples, tokens {stats}", flush=True)

        def spec(variant: str, profile_steps: int = 0) -> Spec:
            return Spec(
                variant=variant,
                work=str(work),
                model_dir=str(model_dir),
                device=args.device,
                method=args.method,
                batch_size=args.batch_size,
                max_seq_length=max_len,
                learning_rate=args.learning_rate,
                seed=args.seed,
                threads=threads,
                skip_steps=args.skip_steps,
                profile_steps=profile_steps,
            )

        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for _ in range(repeats):
            for variant in variants:
                result = _child(spec(variant))
                runs[variant].append(result)
                print(json.dumps({k: v for k, v in result.items() if k != "profile"}), flush=True)
        profile = _child(spec(args.profile_variant, args.profile)) if args.profile else None

    results = {v: _best_result(r) for v, r in runs.items()}
    summary: dict[str, Any] = {}
    if "packed" in results and "padded" in results:
        a, b = results["packed"], results["padded"]
        ratio = a["supervised_tokens_per_s"] / b["supervised_tokens_per_s"]
        cpu_ratio = a["supervised_tokens_per_cpu_s"] / b["supervised_tokens_per_cpu_s"]
        summary = {
            "ratio_supervised_tokens_per_s": round(ratio, 2),
            "ratio_supervised_tokens_per_cpu_s": round(cpu_ratio, 2),
            "packed_padding_waste_percent": a["padding_waste_percent"],
            "target_padding_waste_met": a["padding_waste_percent"] <= TARGET_WASTE,
            "target_ratio_met": ratio >= TARGET_RATIO,
        }
    table = _table(results, args.device == "cuda")
    print()
    print(table)
    if summary:
        per_cpu = f"; per CPU-second {summary['ratio_supervised_tokens_per_cpu_s']}x"
        print(
            f"\npacked / padded supervised tokens/s: {summary['ratio_supervised_tokens_per_s']}x "
            f"(target >= {TARGET_RATIO}x: {'met' if summary['target_ratio_met'] else 'NOT met'}"
            f"{per_cpu if args.device == 'cpu' else ''}); "
            f"packed padding waste {summary['packed_padding_waste_percent']}% "
            f"(target <= {TARGET_WASTE}%: "
            f"{'met' if summary['target_padding_waste_met'] else 'NOT met'})"
        )
    if profile is not None:
        print(f"\nprofile of {profile['variant']}, {profile['steps']} steps:\n{profile['profile']}")

    json_path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {
            "host": platform.node(),
            "nproc": os.cpu_count(),
            "cpu": _cpu_model(),
            "device": device_name,
        },
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": threads,
        # 1-minute load averages: neighbours on the machine slow every variant down.
        "load_average": {"before": load_before[0], "after": os.getloadavg()[0]},
        "settings": {
            "device": args.device,
            "model_size": args.model_size,
            "method": args.method,
            "examples": n_examples,
            "max_seq_length": max_len,
            "batch_size_examples": args.batch_size,
            "learning_rate": args.learning_rate,
            "optimizer": "HF Trainer default (AdamW), linear schedule, one epoch",
            "baseline_loss": "assistant tokens only (same labels as packed)",
            "skip_steps": args.skip_steps,
            "repeats": repeats,
        },
        "dataset_tokens": stats,
        "results": results,
        "runs": runs,
        "summary": summary,
        "table": table,
    }
    if profile is not None:
        report["profile"] = {
            "variant": profile["variant"],
            "steps": profile["steps"],
            "table": profile["profile"],
        }
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path}")


if __name__ == "__main__":
    main()
