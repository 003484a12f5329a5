"""Serving an encoder-decoder: the engine (encoder once per source, per-slot cross-attention
cache) against the batch-of-one seq2seq decode of `jaxlm.sample --source`, sampling that depends
on nothing but the request, and the HTTP API in this process (uvicorn on a thread, the load path
of `python -m jaxlm.serve`) with its encdec-only refusals."""

import asyncio
import dataclasses
import threading

import jax
import jax.numpy as jnp
import openai
import pytest
import uvicorn
from serve_helpers import Server, write_tiny_run
from test_serve_engine import Collect

from jaxlm import sample as sample_verb
from jaxlm.config import base_config
from jaxlm.data.simple_tokenizers import ByteTokenizer
from jaxlm.errors import UserError
from jaxlm.inference.decode import SamplingConfig
from jaxlm.inference.seq2seq import generate_seq2seq
from jaxlm.interop.run_writer import write_run
from jaxlm.models import stack_layers
from jaxlm.serving.app import AppState, create_app
from jaxlm.serving.engine import request_key
from jaxlm.serving.metrics import Metrics
from jaxlm.serving.scheduler import Request, Scheduler
from jaxlm.serving.seq2seq_engine import Seq2SeqEngine
from jaxlm.serving.server import ServeOptions, bind, load_service, serve
from jaxlm.training import checkpoint

MODEL, MAX_LEN, SLOTS = "t5", 32, 2
EOS = ByteTokenizer.eos_id


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """The run's `Service` (loaded and warmed up as the server does) behind uvicorn on a thread."""
  workdir = write_tiny_run(str(tmp_path_factory.mktemp("serve_encdec") / MODEL), MAX_LEN,
                           family="encdec")
  state = AppState(None, 1 << 16, Metrics())
  tokenizer_json = checkpoint.restore_metadata(workdir, None)[2]
  state.service = load_service(ServeOptions(workdir, slots=SLOTS), state.metrics, tokenizer_json)
  sock = bind("127.0.0.1", 0)
  server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning", lifespan="off"))
  thread = threading.Thread(target=asyncio.run, args=(server.serve(sockets=[sock]),),
                            daemon=True)
  thread.start()
  while not server.started:
    thread.join(0.05)
  yield workdir, state.service, Server(None, *sock.getsockname()[:2], [])
  server.should_exit = True
  thread.join()
  state.service.scheduler.stop()


def run_all(service, specs, engine=None, params=None):
  """Each (source ids, max_tokens, temperature, top_k, top_p, seed), all submitted at once to a
  fresh scheduler over the served engine's compiled functions (or `engine`'s); their tokens."""
  scheduler = Scheduler(engine or service.scheduler.engine,
                        params or service.scheduler.params).start()
  try:
    sinks = [Collect(spec[1]) for spec in specs]
    for (source, _, temperature, top_k, top_p, seed), sink in zip(specs, sinks):
      assert scheduler.submit(Request(source, request_key(seed, 0), temperature, top_k, top_p,
                                      sink))
    for sink in sinks:
      assert sink.done.wait(120)
    return [sink.tokens for sink in sinks]
  finally:
    scheduler.stop()


def test_greedy_tokens_equal_the_batch_of_one_seq2seq_decode(served):
  """Sources of both buckets (16, 32; 32 fills the encoder) through 2 slots: later ones are
  inserted while others decode, into slots whose last occupant had a longer source."""
  _, service, _ = served
  engine = service.scheduler.engine
  sources = [list(range(40, 60)) + [EOS], [7, 8, 9, EOS], [100 + i for i in range(31)] + [EOS],
             [65, EOS], [3, 1, 4, 1, 5, 9, EOS]]
  steps = 10
  served_tokens = run_all(service, [(s, steps, 0.0, 0, 1.0, 0) for s in sources])
  greedy = SamplingConfig(max_new_tokens=steps, temperature=0)
  expected = [generate_seq2seq(service.scheduler.params, engine.cfg, [s], greedy,
                               length_multiple=16)[0] for s in sources]
  assert served_tokens == expected
  assert len({tuple(t) for t in expected}) == len(sources)  # each source is read


def test_scanned_layers_serve_the_same_tokens(served):
  """With `scan_layers` the caches (cross-attention's too) stack layers on axis 0: rows go in on
  axis 1, and a bucket's row is padded on axis 2."""
  _, service, _ = served
  cfg, params = service.scheduler.engine.cfg, service.scheduler.params
  scanned = Seq2SeqEngine(dataclasses.replace(cfg, scan_layers=True), SLOTS)
  stacked = {**params, "encoder": stack_layers(params["encoder"], cfg.num_layers),
             "decoder": stack_layers(params["decoder"], cfg.decoder_layers)}
  specs = [([40] * 20 + [EOS], 6, 0.0, 0, 1.0, 0), ([7, 8, EOS], 6, 0.0, 0, 1.0, 0),
           ([5] * 9 + [EOS], 6, 0.0, 0, 1.0, 0)]
  assert run_all(service, specs, scanned, stacked) == run_all(service, specs)


def test_sampled_tokens_depend_only_on_the_request(served):
  _, service, _ = served
  settings = [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.0, 0, 1.0)]
  specs = [([10 + i, 20 + 3 * i, 30][:1 + i % 3] + [EOS], 4 + i % 4, *settings[i % 4], 50 + i)
           for i in range(6)]
  together = run_all(service, specs)  # queued: varied slots and batch-mates
  assert together == [run_all(service, [spec])[0] for spec in specs]
  reseeded = run_all(service, [(*spec[:5], spec[5] + 1) for spec in specs])
  assert reseeded != together  # it did sample


def test_a_completion_is_jaxlm_sample_source(served):
  workdir, _, server = served
  client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=120)
  source = "hello"
  out = client.completions.create(model=MODEL, prompt=source, max_tokens=12, temperature=0)
  expected = sample_verb.sample(workdir, None, "", SamplingConfig(12, 0.0, 0, 1.0), 1, 0,
                                source=source)[0]
  assert out.choices[0].text == expected and expected
  assert out.usage.prompt_tokens == len(source) + 1  # the source and its EOS
  streamed = client.completions.create(model=MODEL, prompt=source, max_tokens=12, temperature=0,
                                       stream=True)
  assert "".join(chunk.choices[0].text for chunk in streamed) == expected
  seeded = dict(model=MODEL, prompt=[source, "other"], max_tokens=6, n=2, seed=9, logprobs=2)
  first, again = (client.completions.create(**seeded) for _ in range(2))
  assert [c.text for c in first.choices] == [c.text for c in again.choices]
  assert all(c.logprobs.token_logprobs and max(c.logprobs.token_logprobs) <= 0
             for c in first.choices)


@pytest.mark.parametrize("body, status, message", [
    ({"prompt": "x" * MAX_LEN}, 400, f"the source is {MAX_LEN + 1} tokens (with its end token) "
                                     f"and this model's encoder reads {MAX_LEN}; shorten it"),
    ({"prompt": "hi", "echo": True}, 400, "echo is not supported by an encoder-decoder"),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "has no chat template; send the "
                                                             "source as the prompt"),
])
def test_what_an_encoder_decoder_refuses(served, body, status, message):
  _, _, server = served
  route = "/v1/chat/completions" if "messages" in body else "/v1/completions"
  code, raw = server.request("POST", route, {"model": MODEL, "max_tokens": 4, **body}, key=None)
  assert code == status and message in raw.decode(), raw
  # truncate_prompt_tokens keeps the end of a long source (and its EOS).
  if "prompt" in body and not body.get("echo"):
    code, raw = server.request("POST", route, {"model": MODEL, "max_tokens": 4, **body,
                                               "truncate_prompt_tokens": MAX_LEN - 1}, key=None)
    assert code == 200, raw


def test_serving_a_bert_run_is_refused_before_loading(tmp_path):
  config = base_config()
  config.data.tokenizer, config.model.family = "byte", "bert"
  config.model.update(d_model=16, num_layers=1, num_heads=2, mlp_dim=32, max_len=16)
  workdir = str(tmp_path / "bert")
  write_run(workdir, config, ByteTokenizer(), lambda engine: jax.tree.map(
      lambda x: jnp.zeros(x.shape, x.dtype), engine.abstract_state.params))
  with pytest.raises(UserError, match="holds a bert run: an encoder has no next-token head"):
    serve(ServeOptions(workdir, port=0))
