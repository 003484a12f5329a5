"""`python -m jaxlm.serve` as a client sees it: a real server subprocess on loopback, talked to
with the official `openai` client and raw HTTP. References are computed here independently: the
`jaxlm.sample` output, a full forward pass for logprobs, each request alone for batching.

One server serves the whole module (its last test drains it with SIGTERM)."""

import concurrent.futures
import http.client
import json
import signal
import socket
import time

import jax
import jax.numpy as jnp
import numpy as np
import openai
import pytest
from serve_helpers import API_KEY, sse_events, start_server, write_tiny_run

from jaxlm import sample as sample_verb
from jaxlm.inference import trained
from jaxlm.inference.decode import SamplingConfig
from jaxlm.models import GPT

MODEL = "run"
MAX_LEN = 128
STREAM_PROMPT = "the cat"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  workdir = write_tiny_run(str(tmp_path_factory.mktemp("serve") / MODEL), MAX_LEN)
  server = start_server(workdir, "--slots=4", "--max_body_bytes=65536", "--shutdown_timeout=60",
                        env_extra={"JAXLM_API_KEY": API_KEY})
  server.workdir = workdir
  yield server
  if server.process.poll() is None:
    server.process.kill()
    server.process.wait()


@pytest.fixture(scope="module")
def client(server):
  return openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(server):
  """The run's parameters, loaded here, and a full (cache-free) forward pass."""
  run = trained.load(server.workdir)
  params = jax.device_get(run.params)
  forward = jax.jit(lambda ids: GPT(run.model_cfg).apply(
      {"params": params}, ids, jnp.arange(ids.shape[1])[None], jnp.ones_like(ids)))

  def logprobs(ids: list[int]) -> np.ndarray:  # [len(ids), vocab]: next-token log-probabilities
    padded = np.zeros((1, MAX_LEN), np.int32)
    padded[0, :len(ids)] = ids
    return np.asarray(jax.nn.log_softmax(forward(padded)[0, :len(ids)], axis=-1))

  return run.tokenizer, logprobs


def test_models_lists_the_served_run(client):
  assert [m.id for m in client.models.list().data] == [MODEL]


def test_greedy_completion_equals_jaxlm_sample(server, client):
  prompt = "the cat"
  out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
  expected = sample_verb.sample(server.workdir, None, prompt, SamplingConfig(24, 0.0, 0, 1.0), 1,
                                0)[0]
  assert prompt + out.choices[0].text == expected
  assert len(out.choices[0].text) > 0
  assert out.usage.prompt_tokens == 1 + len(prompt.encode())  # EOS starts the prompt
  if out.choices[0].finish_reason == "length":
    assert out.usage.completion_tokens == 24


def test_streaming_gives_the_same_text_and_usage_as_a_whole_answer(client):
  for kind in ("completion", "chat"):
    args = dict(model=MODEL, max_tokens=30, temperature=1.0, seed=4, n=2)
    if kind == "completion":
      create, args["prompt"] = client.completions.create, "a dog"
      text = lambda choice: choice.text  # noqa: E731
      delta = lambda choice: choice.text  # noqa: E731
    else:
      create, args["messages"] = client.chat.completions.create, [{"role": "user",
                                                                   "content": "hi"}]
      text = lambda choice: choice.message.content  # noqa: E731
      delta = lambda choice: choice.delta.content or ""  # noqa: E731
    whole = create(**args)
    streamed, finish, usage = ["", ""], [None, None], None
    for chunk in create(**args, stream=True, stream_options={"include_usage": True}):
      if chunk.usage is not None:
        usage = chunk.usage
      for choice in chunk.choices:
        streamed[choice.index] += delta(choice)
        finish[choice.index] = choice.finish_reason or finish[choice.index]
    assert streamed == [text(c) for c in whole.choices], kind
    assert finish == [c.finish_reason for c in whole.choices]
    assert usage.model_dump() == whole.usage.model_dump()


def test_stream_is_server_sent_events_ending_with_done(server):
  status, raw = server.request("POST", "/v1/chat/completions", {
      "model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 5,
      "stream": True})
  assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
  events = sse_events(raw)
  assert events[-1] == "[DONE]"
  assert events[0]["choices"][0]["delta"]["role"] == "assistant"
  assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
  assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")


def test_seed_reproduces_and_choice_i_is_its_own_stream(client):
  args = dict(model=MODEL, prompt="on a mat", max_tokens=16, temperature=1.0, seed=11)
  first = [c.text for c in client.completions.create(**args, n=3).choices]
  again = [c.text for c in client.completions.create(**args, n=3).choices]
  single = client.completions.create(**args, n=1).choices[0].text
  assert first == again and first[0] == single
  assert len(set(first)) > 1
  other = [c.text for c in client.completions.create(**{**args, "seed": 12}, n=3).choices]
  assert other != first


def long_text(client, prompt: str) -> str:
  for seed in range(20):
    text = client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0.8,
                                     seed=seed).choices[0].text
    if len(text) >= 20:
      return text, seed
  raise AssertionError("no long completion")


def test_stop_strings_spanning_tokens_end_the_text_before_them(client):
  text, seed = long_text(client, "the log")
  stop = text[8:11]  # three bytes: three tokens of the byte tokenizer
  expected = text[:text.find(stop)]
  args = dict(model=MODEL, prompt="the log", max_tokens=40, temperature=0.8, seed=seed,
              stop=["zzzz", stop])
  whole = client.completions.create(**args).choices[0]
  assert (whole.text, whole.finish_reason) == (expected, "stop")
  chunks = [c.choices[0].text for c in client.completions.create(**args, stream=True)]
  assert "".join(chunks) == expected
  assert not any(stop in "".join(chunks[:i + 1]) for i in range(len(chunks)))
  unmatched = client.completions.create(**{**args, "stop": "\x07\x07\x07"}).choices[0]
  assert unmatched.text == text


def test_logprobs_and_echo_match_a_full_forward_pass(client, reference):
  tokenizer, logprobs = reference
  prompt = "the dog"
  out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0,
                                  logprobs=3, echo=True).choices[0]
  assert out.text.startswith(prompt)
  ids = [tokenizer.eos_id, *tokenizer.encode(out.text)]
  if out.finish_reason == "stop":
    ids.append(tokenizer.eos_id)
  reference_lp = logprobs(ids[:-1])  # row i: the distribution of token i + 1
  expected = [float(reference_lp[i, ids[i + 1]]) for i in range(len(ids) - 1)]
  got = out.logprobs.token_logprobs
  # Float32 rounding of another summation order (cache vs full forward); values are O(10).
  np.testing.assert_allclose(got, expected[:len(got)], atol=2e-4)
  assert len(got) == len(tokenizer.encode(out.text))
  assert out.logprobs.text_offset == list(range(len(got)))  # one byte per token here

  chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a"}],
                                        max_tokens=5, temperature=0, logprobs=True,
                                        top_logprobs=3).choices[0]
  prompt_ids = [tokenizer.eos_id, *tokenizer.encode("user: a\nassistant: ")]
  generated = [tokenizer.encode(item.token)[0] if item.token else tokenizer.eos_id
               for item in chat.logprobs.content]
  reference_lp = logprobs(prompt_ids + generated)
  for i, item in enumerate(chat.logprobs.content):
    row = reference_lp[len(prompt_ids) - 1 + i]
    np.testing.assert_allclose(item.logprob, row[generated[i]], atol=2e-4)
    np.testing.assert_allclose([t.logprob for t in item.top_logprobs], np.sort(row)[::-1][:3],
                               atol=2e-4)


def test_chat_renders_the_default_template(client):
  messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "cat?"}]
  chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12,
                                        temperature=0)
  rendered = "system: be brief\nuser: cat?\nassistant: "  # the README's default template
  completion = client.completions.create(model=MODEL, prompt=rendered, max_tokens=12,
                                         temperature=0)
  assert chat.choices[0].message.content == completion.choices[0].text
  assert chat.usage.prompt_tokens == 1 + len(rendered)


def mixed_requests(n: int) -> list[dict]:
  rng = np.random.default_rng(1)
  words = ["the", "cat", "dog", "ran", "on", "a", "mat", "café", "→"]
  settings = [dict(temperature=0), dict(temperature=0.7, top_p=0.9), dict(temperature=1.2),
              dict(temperature=1.0, extra_body={"top_k": 5})]
  specs = []
  for i in range(n):
    text = " ".join(rng.choice(words, size=rng.integers(1, 12)))
    spec = dict(model=MODEL, max_tokens=int(rng.integers(4, 24)), seed=i, n=1 + i % 2,
                **settings[i % 4])
    if i % 3 == 0:
      spec["messages"] = [{"role": "user", "content": text}]
    else:
      spec["prompt"] = text
    specs.append(spec)
  return specs


def stream_texts(client, spec: dict) -> list[str]:
  texts = [""] * spec["n"]
  if "messages" in spec:
    for chunk in client.chat.completions.create(**spec, stream=True):
      for choice in chunk.choices:
        texts[choice.index] += choice.delta.content or ""
  else:
    for chunk in client.completions.create(**spec, stream=True):
      for choice in chunk.choices:
        texts[choice.index] += choice.text
  return texts


def test_24_concurrent_mixed_streams_each_equal_their_output_alone(client):
  specs = mixed_requests(24)
  alone = [stream_texts(client, spec) for spec in specs]
  with concurrent.futures.ThreadPoolExecutor(24) as pool:
    together = list(pool.map(lambda spec: stream_texts(client, spec), specs))
  assert together == alone
  assert len({tuple(t) for t in alone}) > 12


def open_stream(server, max_tokens: int, first_chunk: bool = True):
  """A streaming request whose response has begun (and, with `first_chunk`, its first chunk)."""
  connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
  connection.request("POST", "/v1/completions", body=json.dumps({
      "model": MODEL, "prompt": STREAM_PROMPT, "max_tokens": max_tokens, "temperature": 0,
      "stream": True}),
      headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"})
  response = connection.getresponse()
  assert response.status == 200
  if first_chunk:
    first = response.readline()
    assert first.startswith(b"data: "), first
  return connection, response


def test_disconnected_clients_free_their_slots(server, client):
  uncut = client.completions.create(model=MODEL, prompt=STREAM_PROMPT, max_tokens=MAX_LEN - 10,
                                    temperature=0)
  assert uncut.choices[0].finish_reason == "length"  # a client that stays gets every token
  before = server.metrics()["jaxlm_generation_tokens_total"]
  for _ in range(6):  # more than the 4 slots
    connection, response = open_stream(server, MAX_LEN - 10)
    response.close()
    connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()
  deadline = time.monotonic() + 30
  while time.monotonic() < deadline:
    metrics = server.metrics()
    if metrics["jaxlm_active_slots"] == 0 and metrics["jaxlm_queue_depth"] == 0:
      break
    time.sleep(0.05)
  assert metrics["jaxlm_active_slots"] == 0 and metrics["jaxlm_queue_depth"] == 0
  generated = metrics["jaxlm_generation_tokens_total"] - before
  assert generated < 6 * (MAX_LEN - 10) / 2, generated  # cancelled long before the end


def test_api_key_is_required_on_v1_routes(server):
  body = {"model": MODEL, "prompt": "a", "max_tokens": 2}
  for key in (None, "wrong", API_KEY + "x"):
    status, raw = server.request("POST", "/v1/completions", body, key=key)
    assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"
  assert server.request("GET", "/v1/models", key=None)[0] == 401
  assert server.request("POST", "/v1/completions", body)[0] == 200
  assert server.request("GET", "/health", key=None)[0] == 200
  assert server.request("GET", "/metrics", key=None)[0] == 200


def test_context_overflow_unknown_model_and_caps_are_openai_errors(server, client):
  with pytest.raises(openai.BadRequestError, match="maximum context length is 128"):
    client.completions.create(model=MODEL, prompt="x" * 100, max_tokens=40)
  with pytest.raises(openai.NotFoundError, match="does not exist"):
    client.completions.create(model="gpt-4", prompt="x", max_tokens=4)
  long_prompt = "the cat sat on a mat. " * 10  # 221 tokens with the start token
  kept = client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=8, temperature=0,
                                   extra_body={"truncate_prompt_tokens": 50})
  tail = client.completions.create(model=MODEL, prompt=long_prompt[-50:], max_tokens=8,
                                   temperature=0)  # one byte per token: the same 50 tokens
  assert kept.choices[0].text == tail.choices[0].text and kept.usage.prompt_tokens == 51
  status, raw = server.request("POST", "/v1/completions", "{" + " " * 70000 + "}")
  assert status == 413 and json.loads(raw)["error"]["code"] == "body_too_large"


def malformed_requests(rng: np.random.Generator) -> list[tuple[str, str, bytes]]:
  """(method, path, body) of requests that are each wrong in one way."""
  completion = {"model": MODEL, "prompt": "a", "max_tokens": 3}
  chat = {"model": MODEL, "messages": [{"role": "user", "content": "a"}], "max_tokens": 3}
  bad_values = {
      "model": [None, 5, [], "nope"], "prompt": [None, 5, [], [[]], [1.5], [-1], [10**6], {},
                                                  ["a", 1], [[1], "a"], True],
      "max_tokens": ["3", -1, 0, 1.5, 10**9, 200, True], "temperature": [-0.1, 2.5, "1", None],
      "top_p": [0, 1.5, -1, "x"], "top_k": [-2, 1.5, "5"], "n": [0, 17, 1.5, "2"],
      "stop": [5, [1], ["a"] * 5, [""], ""], "seed": [2**63, 1.5, "1"], "stream": ["yes", 1],
      "logprobs": [6, -1, "1", 1.5], "echo": [1, "true"], "best_of": [3], "suffix": ["x"],
      "presence_penalty": [0.5], "frequency_penalty": [1], "logit_bias": [{"1": 2}],
      "stream_options": [{"include_usage": True}, {"bogus": 1}, 5],
      "messages": [[], [{"role": "robot", "content": "x"}], [{"role": "user"}],
                   [{"role": "user", "content": 5}], [{"role": "user", "content": [{"t": 1}]}],
                   "hi", [None]],
      "top_logprobs": [3, 9], "unknown_field": [1, "x"],
  }
  cases = []
  for path, base in (("/v1/completions", completion), ("/v1/chat/completions", chat)):
    for field, values in bad_values.items():
      if field in ("prompt", "logprobs", "echo", "best_of", "suffix") and "messages" in base:
        continue
      if field in ("messages", "top_logprobs") and "prompt" in base:
        continue
      for value in values:
        cases.append(("POST", path, json.dumps({**base, field: value}).encode()))
    for body in (b"", b"{", b"[", b"nul", b"{\"model\": }", b"\xff\xfe", b'{"model": "\xff"}',
                 b"[]", b"1", b'"x"', b"null", b"{}", b'{"prompt": "a"}',
                 bytes(rng.integers(0, 256, 64, dtype=np.uint8)),
                 json.dumps({**base, "max_tokens": 3, "x": "y" * 70000}).encode()):
      cases.append(("POST", path, body))
    for _ in range(80):  # random subsets of fields with random wrong values
      body = dict(base)
      for field in rng.choice(list(bad_values), size=rng.integers(1, 4), replace=False):
        values = bad_values[field]
        body[field] = values[rng.integers(len(values))]
      if body != base:
        cases.append(("POST", path, json.dumps(body).encode()))
  cases += [("GET", "/v1/completions", b""), ("DELETE", "/v1/models", b""),
            ("GET", "/v1/nothing", b""), ("POST", "/v2/completions", b"{}")]
  return cases


def test_a_fuzz_of_malformed_requests_gets_4xx_and_the_server_keeps_serving(server, client):
  cases = malformed_requests(np.random.default_rng(0))
  assert len(cases) >= 300
  for method, path, body in cases:
    status, raw = server.request(method, path, body)
    assert 400 <= status < 500, (status, body[:200], raw[:300])
    assert "message" in json.loads(raw)["error"], raw[:300]
  after = client.completions.create(model=MODEL, prompt="the cat", max_tokens=3, temperature=0)
  assert after.usage.completion_tokens >= 1 and after.choices[0].finish_reason
  assert server.request("GET", "/health", key=None)[0] == 200


def test_sigterm_finishes_requests_in_flight_then_exits_0(server):
  """The module's last test: it stops the server."""
  opened = [open_stream(server, 100, first_chunk=False) for _ in range(6)]  # 4 slots: 2 wait
  server.process.send_signal(signal.SIGTERM)
  time.sleep(0.3)
  with pytest.raises(OSError):  # no new connections while the streams finish
    socket.create_connection((server.host, server.port), timeout=5).close()
  assert server.process.poll() is None
  for connection, response in opened:
    events = sse_events(response.read())
    connection.close()
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
  assert server.process.wait(timeout=60) == 0
