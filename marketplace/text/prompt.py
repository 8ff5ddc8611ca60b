"""The prompt of an OpenAI chat or completion request, as the built-in text model reads it.

Chat template (``CHAT_TEMPLATE``): each message as ``"{role}: {content}\\n\\n"``, then
``"assistant:"``; a content given as a list of parts is the concatenation of its ``text`` parts.
A completion's prompt is the ``prompt`` string as sent (or the one string of a one-item list).
The input tokens of a call are ``count_tokens(prompt_text(...))``: exact, computed the same way by
the daemon and by the client. The model continues from the last word of the last message (chat) or
of the prompt (completion): ``chat_context`` says which text that is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from marketplace.text.errors import InvalidPrompt
from marketplace.text.tokenizer import count_tokens

__all__ = ["CHAT_TEMPLATE", "chat_context", "prompt_text", "prompt_tokens"]

CHAT_TEMPLATE = "{role}: {content}\n\n"  # per message, then "assistant:"
_ASSISTANT_CUE = "assistant:"


def _content(message: Any, index: int) -> tuple[str, str]:
    if not isinstance(message, Mapping):
        raise InvalidPrompt("a message is an object", path=f"messages[{index}]")
    role, content = message.get("role"), message.get("content")
    if not isinstance(role, str) or not role:
        raise InvalidPrompt("role is a non-empty string", path=f"messages[{index}].role")
    if content is None:
        return role, ""
    if isinstance(content, str):
        return role, content
    if isinstance(content, list):
        texts = []
        for part_index, part in enumerate(content):
            text = part.get("text") if isinstance(part, Mapping) and part.get("type") == "text" else None
            if not isinstance(text, str):
                raise InvalidPrompt("only text parts are read", path=f"messages[{index}].content[{part_index}]")
            texts.append(text)
        return role, "".join(texts)
    raise InvalidPrompt("content is a string or a list of text parts", path=f"messages[{index}].content")


def _messages(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidPrompt("messages is a non-empty list", path="messages")
    return [_content(message, index) for index, message in enumerate(messages)]


def _prompt(body: Mapping[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidPrompt("prompt is a string (token arrays and batches are not taken)", path="prompt")
    return prompt


def prompt_text(kind: Literal["chat", "completion"], body: Mapping[str, Any]) -> str:
    """The text the model reads for a request (InvalidPrompt if ``body`` has no usable prompt)."""
    if kind == "chat":
        return "".join(CHAT_TEMPLATE.format(role=role, content=content) for role, content in _messages(body)) + (
            _ASSISTANT_CUE
        )
    return _prompt(body)


def prompt_tokens(kind: Literal["chat", "completion"], body: Mapping[str, Any]) -> int:
    """The exact input tokens of a request for the built-in model."""
    return count_tokens(prompt_text(kind, body))


def chat_context(kind: Literal["chat", "completion"], body: Mapping[str, Any]) -> str:
    """The text whose last known word the reply continues: the last message's content, or the prompt."""
    if kind == "chat":
        return _messages(body)[-1][1]
    return _prompt(body)
