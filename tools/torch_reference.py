"""PyTorch eager reference for the CPU step time of a preset's training step (issue 17's "PyTorch
eager side by side"): the same decoder (RMSNorm, RoPE, causal attention, SwiGLU, tied
embeddings; the preset's sizes), float32, AdamW with global-norm clipping, on random tokens.
Each step is timed to completion (eager PyTorch on CPU is synchronous); the first
``--warmup`` steps are excluded; prints one JSON object with the per-step times and their
median. Not part of the package (torch is never a dependency): run it from a virtual
environment that has torch and numpy, next to ``scaling train`` on the same host, e.g.

    python tools/torch_reference.py --d-model 768 --layers 12 --heads 12 --d-ff 2048 \\
        --vocab 50304 --batch 4 --seq 256 --steps 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.gain, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.gain


def rope(x, theta: float = 10000.0):
    """Rotary positions on (b, h, t, k), halves rotated (Llama's layout)."""
    t, k = x.shape[-2], x.shape[-1]
    freqs = theta ** (-torch.arange(0, k, 2, dtype=torch.float32) / k)
    angles = torch.arange(t, dtype=torch.float32)[:, None] * freqs[None]
    cos, sin = torch.cos(angles).repeat(1, 2), torch.sin(angles).repeat(1, 2)
    first, second = x[..., : k // 2], x[..., k // 2 :]
    return x * cos + torch.cat([-second, first], -1) * sin


class Block(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int):
        super().__init__()
        self.heads = heads
        self.attn_norm, self.ffn_norm = RMSNorm(d), RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.w1, self.w3 = nn.Linear(d, d_ff, bias=False), nn.Linear(d, d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).split(d, -1)
        q, k, v = (a.view(b, t, self.heads, -1).transpose(1, 2) for a in (q, k, v))
        out = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
        x = x + self.o(out.transpose(1, 2).reshape(b, t, d))
        h = self.ffn_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class Decoder(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.embed = nn.Embedding(args.vocab, args.d_model)
        self.blocks = nn.ModuleList(
            Block(args.d_model, args.heads, args.d_ff) for _ in range(args.layers)
        )
        self.norm = RMSNorm(args.d_model)
        for p in self.parameters():  # the preset's init: N(0, 0.02²) matrices, unit gains
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.T  # tied read-out


def main() -> None:
    parser = argparse.ArgumentParser()
    for name, default in (("d-model", 768), ("layers", 12), ("heads", 12), ("d-ff", 2048),
                          ("vocab", 50304), ("batch", 4), ("seq", 256), ("steps", 6),
                          ("warmup", 2)):  # fmt: skip
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Decoder(args)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1))
    times = []
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - start)
    measured = times[args.warmup :]
    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "n_params": sum(p.numel() for p in model.parameters()),
        "step_times_s": measured,
        "step_time_s_median": statistics.median(measured),
        "final_loss": loss.item(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
