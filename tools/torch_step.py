"""PyTorch reference: the nanoGPT-architecture train step, timed on this machine, for same-run ratios.

    python tools/torch_step.py [--repeats=5] [--steps=20]

nanoGPT's CPU recipe model written plainly in PyTorch eager (as nanoGPT runs with --compile=False):
4 layers, 4 heads, d_model 128, T=64, batch 12, vocabulary 65, learned positions, LayerNorm
without biases, tanh GELU, tied embeddings, causal `scaled_dot_product_attention`, AdamW with
weight decay on matrices, gradient clipping at 1.0. Random tokens (the step time does not depend on
them). Prints the median step time over `repeats` timed runs of `steps` steps, after warm-up, as
one JSON line. torch is a test dependency (`make test` installs it), not a jaxlm dependency.
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

VOCAB, LAYERS, HEADS, WIDTH, SEQ, BATCH = 65, 4, 4, 128, 64, 12


class Block(nn.Module):
  def __init__(self):
    super().__init__()
    self.ln_attn, self.ln_mlp = nn.LayerNorm(WIDTH, bias=False), nn.LayerNorm(WIDTH, bias=False)
    self.qkv, self.out = nn.Linear(WIDTH, 3 * WIDTH, bias=False), nn.Linear(WIDTH, WIDTH, bias=False)
    self.wi, self.wo = nn.Linear(WIDTH, 4 * WIDTH, bias=False), nn.Linear(4 * WIDTH, WIDTH, bias=False)

  def forward(self, x):  # x: [batch, seq, width]
    batch, seq, _ = x.shape
    q, k, v = self.qkv(self.ln_attn(x)).split(WIDTH, dim=2)
    q, k, v = (t.view(batch, seq, HEADS, WIDTH // HEADS).transpose(1, 2) for t in (q, k, v))
    attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [batch, heads, seq, head]
    x = x + self.out(attended.transpose(1, 2).reshape(batch, seq, WIDTH))
    return x + self.wo(F.gelu(self.wi(self.ln_mlp(x)), approximate="tanh"))


class GPT(nn.Module):
  def __init__(self):
    super().__init__()
    self.embed, self.pos = nn.Embedding(VOCAB, WIDTH), nn.Embedding(SEQ, WIDTH)
    self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
    self.ln_final = nn.LayerNorm(WIDTH, bias=False)

  def forward(self, tokens, targets):
    x = self.embed(tokens) + self.pos(torch.arange(tokens.shape[1]))
    for block in self.blocks:
      x = block(x)
    logits = self.ln_final(x) @ self.embed.weight.T  # tied: [batch, seq, vocab]
    return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args()
  torch.manual_seed(0)
  model = GPT()
  matrices = [p for p in model.parameters() if p.dim() >= 2]
  others = [p for p in model.parameters() if p.dim() < 2]
  optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1},
                                 {"params": others, "weight_decay": 0.0}],
                                lr=1e-3, betas=(0.9, 0.99))
  tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1))

  def step():
    loss = model(tokens[:, :-1], tokens[:, 1:])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss

  for _ in range(5):
    step()
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    for _ in range(args.steps):
      step()
    times.append((time.perf_counter() - start) / args.steps)
  print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                    "step_time_ms": 1e3 * statistics.median(times)}))


if __name__ == "__main__":
  main()
