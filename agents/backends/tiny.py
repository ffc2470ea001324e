"""A tiny randomly initialised Llama and a BPE tokenizer trained on the fly.

No model hub is reachable here, so tests and smoke runs build a real (if untrained) causal LM in
well under a second. It exercises every code path of the ``hf`` backend: chat templates, left
padding, batched sampling and option scoring.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]

DEFAULT_CORPUS = (
    "<think> The user likes cooking and travel videos. </think>",
    "<answer> (1) User_preference: cooking, travel (2) Prediction: Yes </answer>",
    "<answer> (1) User_preference: gaming (2) Prediction: No </answer>",
    "User's viewing history: - Quick pasta #cooking - Street food tour #travel",
    "Candidate video: Funny cat compilation #pets #comedy",
    "A short profile of the video with refined #tags #funny #food #music #diy",
)


def build_tiny_tokenizer(corpus: Iterable[str] = DEFAULT_CORPUS, vocab_size: int = 512):
    """Train a byte-level BPE tokenizer with a chat template on ``corpus``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(corpus), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
        eos_token="<|end|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(tokenizer, seed: int = 0, hidden_size: int = 64, layers: int = 2):
    """A randomly initialised ``LlamaForCausalLM`` of about 0.1 M parameters."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_hf_backend(seed: int = 0, batch_size: int = 8, corpus: Iterable[str] = DEFAULT_CORPUS):
    """An :class:`~agents.backends.hf.HFBackend` over a tiny random model."""
    from vragent.agents.backends.hf import HFBackend

    tok = build_tiny_tokenizer(corpus)
    model = build_tiny_model(tok, seed=seed)
    return HFBackend(
        model=model, tokenizer=tok, model_name=f"tiny-random-llama-s{seed}",
        batch_size=batch_size, device="cpu",
    )


def save_tiny_model(folder: str | Path, seed: int = 0,
                    corpus: Iterable[str] = DEFAULT_CORPUS) -> Path:
    """Write a tiny random model and its tokenizer as a transformers folder.

    Training tests start from it (``base_model: tiny-random``): the folder loads like any
    other model, with ``AutoModelForCausalLM`` and ``AutoTokenizer``.

    Returns:
        The folder.
    """
    folder = Path(folder)
    tok = build_tiny_tokenizer(corpus)
    model = build_tiny_model(tok, seed=seed)
    model.generation_config.pad_token_id = tok.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder
