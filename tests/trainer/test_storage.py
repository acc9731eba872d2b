"""Storage: s3:// against an S3-compatible server on loopback (moto in server mode), pvc://
mounts, relative file:// URIs, and hf:// failing clearly when the hub is out of reach."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from whetstone_contract.config import ModelSource
from whetstone_contract.result import TrainerResult
from whetstone_trainer.artifact import verify
from whetstone_trainer.model import ModelError, resolve_model_dir
from whetstone_trainer.storage import (
    LocalLocation,
    S3Location,
    open_location,
    resolve_relative_file_uri,
)

from trainer_helpers import ConfigFactory, run_trainer, subprocess_env, write_config

pytestmark = pytest.mark.trainer

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
KMS_KEY = "alias/models"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    pytest.importorskip("moto", reason="moto[server] provides the loopback S3 server")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> Any:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for bucket in ("datasets", "models", "base"):
        client.create_bucket(Bucket=bucket)
    return client


def test_s3_location_round_trip_with_encryption(s3: Any, tmp_path: Path) -> None:
    default = open_location("s3://models/roundtrip/plain.txt")
    assert isinstance(default, S3Location)
    default.write_text("hello")
    assert default.read_text() == "hello" and default.exists()
    assert (
        s3.head_object(Bucket="models", Key="roundtrip/plain.txt")["ServerSideEncryption"]
        == "AES256"
    )
    kms = open_location("s3://models/roundtrip/kms/", kms_key_id=KMS_KEY)
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("b")
    (folder / "COMPLETE").write_text("done")
    kms.upload_dir(folder, last="COMPLETE")
    assert kms.list_files() == ["COMPLETE", "a.txt", "sub/b.txt"]
    assert kms.list_children() == ["COMPLETE", "a.txt", "sub"]
    head = s3.head_object(Bucket="models", Key="roundtrip/kms/sub/b.txt")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith(KMS_KEY.split("/")[-1])
    back = tmp_path / "back"
    kms.download_dir(back)
    assert (back / "sub" / "b.txt").read_text() == "b"
    kms.delete()
    assert kms.list_files() == []
    assert not open_location("s3://models/roundtrip/absent").exists()


def test_training_from_and_to_s3(
    s3: Any, tmp_path: Path, make_config: ConfigFactory, seed_data: Path, tiny_model_dir: Path
) -> None:
    s3.upload_file(str(seed_data), "datasets", "chat/train.jsonl")
    for path in tiny_model_dir.iterdir():
        s3.upload_file(str(path), "base", f"tiny/{path.name}")
    config = make_config(
        baseModel={"uri": "s3://base/tiny/"},
        dataset={"train": {"uri": "s3://datasets/chat/train.jsonl"}},
        hyperparameters={"maxSteps": 20, "evalSteps": 10},
        output={
            "uri": "s3://models/tiny-test/",
            "checkpointEverySteps": 10,
            "encryption": {"kmsKeyId": KMS_KEY},
        },
    )
    termination = tmp_path / "termination-log"
    proc = run_trainer(
        ["--config", str(write_config(config, tmp_path / "config.json"))],
        env=subprocess_env(
            WHETSTONE_TERMINATION_LOG=str(termination), WHETSTONE_WORK_DIR=str(tmp_path / "work")
        ),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = TrainerResult.model_validate_json(termination.read_text())
    assert result.artifact_uri == "s3://models/tiny-test/final/"

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="models", Prefix="tiny-test/")["Contents"]]
    assert "tiny-test/final/COMPLETE" in keys and "tiny-test/final/manifest.json" in keys
    assert "tiny-test/checkpoints/checkpoint-20/COMPLETE" in keys
    assert "tiny-test/data-report.json" in keys and "tiny-test/result.json" in keys
    for key in keys:
        head = s3.head_object(Bucket="models", Key=key)
        assert head["ServerSideEncryption"] == "aws:kms", key
        assert head["SSEKMSKeyId"].endswith("models"), key

    assert verify(result.artifact_uri, result.manifest_digest).ok

    # A longer run at the same output resumes from the checkpoint kept in S3.
    longer = config.model_copy(
        update={"hyperparameters": config.hyperparameters.model_copy(update={"max_steps": 30})}
    )
    proc = run_trainer(
        ["--config", str(write_config(longer, tmp_path / "longer.json"))],
        env=subprocess_env(
            WHETSTONE_TERMINATION_LOG=str(termination),
            WHETSTONE_WORK_DIR=str(tmp_path / "fresh-work"),
        ),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first_logged = json.loads(
        next(line for line in proc.stdout.splitlines() if line.startswith('{"step": '))
    )["step"]
    assert first_logged > 20, "the second run did not resume from s3://.../checkpoint-20"
    result = TrainerResult.model_validate_json(termination.read_text())
    assert result.steps == 30
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="models", Prefix="tiny-test/")["Contents"]]
    assert "tiny-test/checkpoints/checkpoint-30/COMPLETE" in keys

    proc = run_trainer(["verify", result.artifact_uri, "--digest", result.manifest_digest])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s3.put_object(Bucket="models", Key="tiny-test/final/config.json", Body=b"{}")
    tampered = verify(result.artifact_uri, result.manifest_digest)
    assert not tampered.ok and any(p.startswith("config.json") for p in tampered.problems)
    assert not verify("s3://models/nothing-here/").ok


def test_pvc_uris_resolve_under_the_mount_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WHETSTONE_PVC_ROOT", str(tmp_path / "mnt"))
    location = open_location("pvc://datasets/chat/train.jsonl")
    assert isinstance(location, LocalLocation)
    assert location.path == tmp_path / "mnt" / "datasets" / "chat" / "train.jsonl"
    location.write_text("{}\n")
    assert (tmp_path / "mnt" / "datasets" / "chat" / "train.jsonl").read_text() == "{}\n"
    monkeypatch.delenv("WHETSTONE_PVC_ROOT")
    default = open_location("pvc://claim/x")
    assert isinstance(default, LocalLocation) and default.path == Path("/mnt/pvc/claim/x")


def test_relative_file_uris_resolve_against_a_folder(tmp_path: Path) -> None:
    assert resolve_relative_file_uri("file://data/x.jsonl", tmp_path) == (
        f"file://{tmp_path}/data/x.jsonl"
    )
    assert resolve_relative_file_uri("file:///abs/x.jsonl", tmp_path) == "file:///abs/x.jsonl"
    assert resolve_relative_file_uri("s3://b/k", tmp_path) == "s3://b/k"


def test_hf_offline_fails_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelError) as info:
        resolve_model_dir(ModelSource(uri="hf://meta-llama/Llama-3.2-1B-Instruct"), tmp_path)
    message = str(info.value)
    assert "hf://meta-llama/Llama-3.2-1B-Instruct" in message
    assert "HF_HUB_OFFLINE" in message and "s3:// or pvc://" in message
