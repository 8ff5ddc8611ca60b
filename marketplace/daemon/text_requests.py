"""The OpenAI request bodies the daemon's text routes take, checked before anything is paid.

`parse_text_request(body, kind)` returns the parsed object, or ApiError 400 `invalid_request`
naming the field at fault (a JSON object with `model`; `messages` for a chat, `prompt` for a
completion; `stream`, `stream_options.include_usage`, `max_tokens` / `max_completion_tokens`,
`n` of the right types; `n` > 1 refused: one choice is what a cap pays for).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import orjson

from marketplace.daemon.errors import ApiError

__all__ = ["TextKind", "include_usage", "parse_text_request", "requested_max_tokens"]

TextKind = Literal["chat", "completion"]
_MAX_TOKENS_FIELDS = ("max_completion_tokens", "max_tokens")


def _invalid(detail: str) -> ApiError:
    return ApiError(400, "invalid_request", detail)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_messages(messages: object) -> None:
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages must be a non-empty array of message objects")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _invalid(f"messages[{index}] must be an object with a string role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _invalid(f"messages[{index}].content must be a string, an array of parts or null")


def _check_prompt(prompt: object) -> None:
    if isinstance(prompt, str):
        return
    if not isinstance(prompt, list) or not prompt or not all(isinstance(part, str) for part in prompt):
        raise _invalid("prompt must be a string or a non-empty array of strings")


def parse_text_request(body: bytes, kind: TextKind) -> dict[str, Any]:
    """The request object of a chat (`kind` "chat") or plain completion; 400 if malformed."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise _invalid(f"the body is not JSON ({error})") from None
    if not isinstance(request, dict):
        raise _invalid("the body must be a JSON object")
    if not isinstance(request.get("model"), str):
        raise _invalid("model is required: the 0x model id (GET /v1/models lists them)")
    if kind == "chat":
        _check_messages(request.get("messages"))
    else:
        _check_prompt(request.get("prompt"))
    if not isinstance(request.get("stream", False), bool):
        raise _invalid("stream must be true or false")
    options = request.get("stream_options")
    if options is not None and (not isinstance(options, dict)
                                or not isinstance(options.get("include_usage", False), bool)):
        raise _invalid("stream_options must be an object whose include_usage is true or false")
    for name in _MAX_TOKENS_FIELDS:
        value = request.get(name)
        if value is not None and (not _is_int(value) or value < 1):
            raise _invalid(f"{name} must be a positive integer")
    n = request.get("n", 1)
    if n is not None and (not _is_int(n) or n != 1):
        raise _invalid("n must be 1: one choice per paid call")
    return request


def requested_max_tokens(request: Mapping[str, Any]) -> int | None:
    """The output tokens the request asks for at most (max_completion_tokens, else max_tokens)."""
    for name in _MAX_TOKENS_FIELDS:
        value = request.get(name)
        if value is not None:
            return int(value)
    return None


def include_usage(request: Mapping[str, Any]) -> bool:
    """Whether a streamed answer ends with a usage chunk (`stream_options.include_usage`)."""
    options = request.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
