"""A real `python -m jaxlm.serve` subprocess on a free loopback port, over a small run written
directly (random weights, scaled up so that greedy choices are far from ties), and raw HTTP."""

import dataclasses
import http.client
import json
import re
import subprocess

import flax.linen as nn
import jax
import jax.numpy as jnp
from conftest import REPO, subprocess_env

from jaxlm.config import base_config
from jaxlm.data.simple_tokenizers import ByteTokenizer
from jaxlm.interop.run_writer import write_run
from jaxlm.models import GPT, EncDec, ModelConfig
from jaxlm.serving.launch import launch

API_KEY = "test-key-123"


# An encoder-decoder as T5 v1.1 builds it (relative positions: they enter every attention call).
T5_OPTIONS = dict(family="encdec", num_decoder_layers=1, positions="relative", norm="rmsnorm",
                  mlp="geglu", use_bias=False, tie_embeddings=False, relative_buckets=8,
                  relative_max_distance=16)


def write_tiny_run(workdir: str, max_len: int = 128, family: str = "gpt") -> str:
  """A GPT (or, `family="encdec"`, a T5-style encoder-decoder trained on seq2seq pairs) with the
  byte tokenizer, as step 0 of a run in `workdir`."""
  config = base_config()
  config.data.tokenizer, config.data.seq_len = "byte", max_len
  config.model.max_len = max_len
  config.model.d_model, config.model.num_layers, config.model.num_heads = 32, 2, 2
  config.model.mlp_dim = 64
  if family == "encdec":
    config.data.format = "seq2seq"
    config.model.update(num_layers=1, **T5_OPTIONS)
  tokenizer = ByteTokenizer()
  cfg = ModelConfig.from_config(config.model, vocab_size=tokenizer.vocab_size)
  tokens = jnp.zeros((1, 8), jnp.int32)
  if family == "encdec":
    params = EncDec(cfg).init(jax.random.key(3), tokens, tokens, tokens + 1, encoder_inputs=tokens,
                              encoder_positions=tokens, encoder_segment_ids=tokens + 1)
  else:
    params = GPT(cfg).init(jax.random.key(3), tokens, tokens, tokens + 1)
  # Weights x4, so that greedy choices are far from ties; an encoder-decoder's x8 but its
  # unit-variance embedding, so that the cross-attention weighs against the decoder's own input.
  scale, unscaled = (8, "embedding") if family == "encdec" else (4, None)
  params = {name: value if name == unscaled else jax.tree.map(
      lambda x: x * scale if x.ndim >= 2 else x, value)
      for name, value in nn.unbox(params["params"]).items()}
  write_run(workdir, config, tokenizer, params)
  return workdir


@dataclasses.dataclass
class Server:
  process: subprocess.Popen
  host: str
  port: int
  log: list

  @property
  def base_url(self) -> str:
    return f"http://{self.host}:{self.port}/v1"

  def request(self, method: str, path: str, body=None, headers=None, key: str | None = API_KEY,
              timeout: float = 60):
    """(status, body bytes) of one request on a fresh connection; `body` dict/str/bytes."""
    connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
    if isinstance(body, dict | list):
      body = json.dumps(body)
    if isinstance(body, str):
      body = body.encode()
    headers = {"content-type": "application/json", **(headers or {})}
    if key is not None:
      headers["authorization"] = f"Bearer {key}"
    try:
      connection.request(method, path, body=body, headers=headers)
      response = connection.getresponse()
      return response.status, response.read()
    finally:
      connection.close()

  def metrics(self) -> dict[str, float]:
    _, text = self.request("GET", "/metrics", key=None)
    values = {}
    for line in text.decode().splitlines():
      match = re.fullmatch(r"(jaxlm_[a-z_]+) ([0-9.e+-]+)", line)
      if match:
        values[match[1]] = float(match[2])
    return values


def start_server(workdir: str, *args: str, env_extra: dict | None = None) -> Server:
  env = {**subprocess_env(), **(env_extra or {})}
  process, host, port, log = launch(workdir, *args, env=env, cwd=REPO)
  return Server(process, host, port, log)


def sse_events(raw: bytes) -> list:
  """The `data:` payloads of an SSE body: JSON objects, and the final "[DONE]"."""
  events = []
  for block in raw.decode().split("\n\n"):
    if block.startswith("data: "):
      data = block[len("data: "):]
      events.append(data if data == "[DONE]" else json.loads(data))
  return events
