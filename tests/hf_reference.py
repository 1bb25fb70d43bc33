"""Tiny random Hugging Face GPT-2 / Llama models and tokenizers: the independent references of the
interop tests, built offline from configs with transformers (torch CPU)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Tokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
)

GPT2_VOCAB = 320  # the byte-level tokenizer below has 256 bytes + merges + <|endoftext|>
TEXT = (
    "The for statement is used to iterate over the elements of a sequence. "
    "Exceptions are raised when an error is detected. A class definition defines a class "
    "object; the statements in its body are executed in a new scope.\n"
)


def randomize(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Adds noise to every parameter: norms away from 1 and biases away from 0 (transformers
    initialises those to constants, which would hide a swapped or dropped tensor)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model.eval()


def tiny_gpt2(tie: bool = True, seed: int = 0, eos_id: int | None = None) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=GPT2_VOCAB,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=64,
        tie_word_embeddings=tie,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    return randomize(GPT2LMHeadModel(cfg), seed + 1)


def tiny_llama(
    n_kv_heads: int = 2,
    tie: bool = False,
    head_dim: int | None = None,
    rope_theta: float = 500.0,
    seed: int = 0,
) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=n_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=64,
        rope_theta=rope_theta,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
    )
    return randomize(LlamaForCausalLM(cfg), seed + 1)


def logits(model: torch.nn.Module, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.numpy()


def greedy(model: torch.nn.Module, prompt: list[int], n: int, eos_id: int | None) -> list[int]:
    """transformers' greedy generate of one unpadded prompt: the new ids (eos included)."""
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)
    return out[0, len(prompt) :].tolist()


def save_gpt2_tokenizer(path: pathlib.Path) -> GPT2Tokenizer:
    """A byte-level BPE (GPT-2's scheme) with merges learned from TEXT, saved as tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    bpe.train_from_iterator([TEXT] * 4, trainer)
    # tokenizer.json stores merges as [a, b] pairs (older tokenizers: "a b" strings).
    stored = json.loads(bpe.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in stored]
    tok = GPT2Tokenizer(vocab=bpe.get_vocab(), merges=merges)
    tok.save_pretrained(path)
    assert len(tok) <= GPT2_VOCAB
    return tok


def save_llama_tokenizer(path: pathlib.Path) -> LlamaTokenizer:
    """A SentencePiece-style (metaspace) BPE with Llama's specials <unk>=0, <s>=1, </s>=2."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "\u2581": 3}
    for ch in sorted(set(TEXT) - {" ", "\n"}):
        vocab[ch] = len(vocab)
    merges = [("\u2581", "t"), ("h", "e"), ("\u2581t", "he"), ("\u2581", "a"), ("i", "n")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = LlamaTokenizer(vocab=vocab, merges=merges)
    tok.save_pretrained(path)
    return tok


def auto_tokenizer(path: pathlib.Path):
    return AutoTokenizer.from_pretrained(path)
