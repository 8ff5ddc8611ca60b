"""Text for the metered LLM calls, pure Python (no onnxruntime, no numpy): the client SDK imports it.

- :mod:`~marketplace.text.tokenizer`: the built-in text model's word-level tokenizer (exact
  round trip, exact token counts);
- :mod:`~marketplace.text.prompt`: the prompt of a chat or completion request (the chat template)
  and its exact token count for the built-in model;
- :mod:`~marketplace.text.sse`: a server-sent events parser (OpenAI streams).
"""

from marketplace.text.prompt import CHAT_TEMPLATE, chat_context, prompt_text, prompt_tokens
from marketplace.text.sse import SseParser
from marketplace.text.tokenizer import count_tokens, detokenize, tokenize

__all__ = [
    "CHAT_TEMPLATE",
    "SseParser",
    "chat_context",
    "count_tokens",
    "detokenize",
    "prompt_text",
    "prompt_tokens",
    "tokenize",
]
