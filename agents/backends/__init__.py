"""LLM backends: ``hf`` (transformers in-process), ``openai`` (vLLM and compatible servers).

Heavy modules (torch, httpx) are imported only by the backend that needs them.
"""

from vragent.agents.backends.base import BackendError, ChatPrompt, Generation, LLMBackend, Score

__all__ = ["BackendError", "ChatPrompt", "Generation", "LLMBackend", "Score"]
