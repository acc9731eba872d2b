"""Turn pydantic validation errors into messages that name the field and the fix."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class SpecError(ValueError):
    """An object's spec is invalid; `messages` name each offending field."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


def field_path(loc: tuple[int | str, ...], prefix: str = "spec") -> str:
    """`('dataset', 'train', 'uri')` -> `spec.dataset.train.uri`; list indexes in brackets."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part:
            path += f".{part}"
    return path


def describe(exc: ValidationError, prefix: str = "spec") -> list[str]:
    """One message per error: `<field path>: <what is wrong>`."""
    messages = []
    for err in exc.errors(include_url=False):
        text = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            text = "unknown field: remove it or check its spelling"
        elif err["type"] == "missing":
            text = "required field is missing"
        messages.append(f"{field_path(tuple(err['loc']), prefix)}: {text}")
    return messages


def parse_spec(model: type[M], spec: Any, prefix: str = "spec") -> M:
    """Validate `spec` with `model`, raising SpecError with field-naming messages."""
    try:
        return model.model_validate(spec)
    except ValidationError as exc:
        raise SpecError(describe(exc, prefix)) from exc
