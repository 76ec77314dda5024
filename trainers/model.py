"""Models: our mini GPT (nanoGPT's, trimmed) and any Hugging Face causal LM built from a config.

Both map token ids (B, T) to logits (B, T, vocab); the loop computes the loss itself so that
every family is trained and measured the same way.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainers.config import ModelConfig
from trainers.errors import ConfigError

# GPT-2's choices; the MLP width shapes the Hugging Face models built from a ModelConfig too
MLP_WIDTH = 4  # hidden units of each block's MLP, per embedding dimension
INIT_STD = 0.02  # of every weight matrix and embedding of our GPT at initialisation


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        # (B, T, 3C) -> three (B, n_head, T, head_size)
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        # flash / memory-efficient kernels where the device has them
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, MLP_WIDTH * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(MLP_WIDTH * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.block_size = cfg.block_size
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        # tied embeddings: fewer parameters, better small models
        self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) to keep activations O(1)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=INIT_STD / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, vocab)."""
        T = idx.shape[1]
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


class HFCausalLM(nn.Module):
    """A transformers causal LM behind the same (B, T) -> logits interface."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=idx, use_cache=False).logits


def build_model(cfg: ModelConfig, vocab_size: int) -> nn.Module:
    """Build (on the CPU) the model that `cfg` describes."""
    if cfg.family == "gpt":
        return GPT(cfg, vocab_size)
    return HFCausalLM(_build_hf(cfg, vocab_size))


def _build_hf(cfg: ModelConfig, vocab_size: int) -> nn.Module:
    from pathlib import Path

    import transformers

    source = Path(cfg.hf_config).expanduser()
    if cfg.pretrained:
        if not source.is_dir():
            raise ConfigError(
                f"model.pretrained needs model.hf_config to be a local checkpoint folder, "
                f"but got {cfg.hf_config!r} (nothing is downloaded)"
            )
        model = transformers.AutoModelForCausalLM.from_pretrained(
            source, attn_implementation="sdpa", local_files_only=True
        )
        if model.get_input_embeddings().num_embeddings < vocab_size:
            model.resize_token_embeddings(vocab_size)
        return model
    if source.is_dir():
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
    else:
        try:
            config = transformers.AutoConfig.for_model(cfg.hf_config)
        except ValueError as e:
            raise ConfigError(
                f"model.hf_config {cfg.hf_config!r} is neither a transformers model_type "
                "(llama, gpt2, mistral, ...) nor a local folder with a config.json"
            ) from e
        # the standard names; each config maps them onto its own (gpt2: n_embd, n_layer, ...)
        sizes = {
            "hidden_size": cfg.n_embd,
            "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.n_head,
            "intermediate_size": MLP_WIDTH * cfg.n_embd,
            "n_inner": MLP_WIDTH * cfg.n_embd,
            "max_position_embeddings": cfg.block_size,
            "attention_dropout": cfg.dropout,
            "hidden_dropout": cfg.dropout,
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout,
            "tie_word_embeddings": True,
        }
        for name, value in sizes.items():
            if hasattr(config, name) or name in getattr(config, "attribute_map", {}):
                setattr(config, name, value)
    config.vocab_size = vocab_size
    for token in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(config, token, None) is not None and getattr(config, token) >= vocab_size:
            setattr(config, token, None)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def flops_per_token(cfg: ModelConfig, vocab_size: int) -> float:
    """Training FLOPs per token of our GPT (PaLM appendix B): 6 per matmul weight (forward and
    backward) plus the attention scores, 12 * n_layer * block_size * n_embd."""
    # per block: q, k, v and the attention's output (4 n_embd^2), then the MLP's two matrices
    per_block = (4 + 2 * MLP_WIDTH) * cfg.n_embd**2
    matmul_weights = cfg.n_layer * per_block + vocab_size * cfg.n_embd
    return 6 * matmul_weights + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd


def count_params(model: nn.Module) -> int:
    """Trainable parameters, each tied tensor once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
