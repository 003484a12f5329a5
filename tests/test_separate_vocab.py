"""Separate source / target vocabularies (data.separate_vocab) of an encoder-decoder, at tiny sizes:
each SentencePiece model learnt from its own side only, the encoder embedding sized by the source
vocabulary and the decoder embedding and head by the target one, both tokenizers saved and read
back by evaluate, sample and a finetune, the tied head, and the refusals (docs/errors.md)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
from test_encdec_cli import tiny_t5_config, write_pairs
from test_encdec_errors import check_message, train_tiny_gpt
from test_errors import cases, user_error

from jaxlm.config import base_config
from jaxlm.convert import to_hf
from jaxlm.data import load_tokenizer
from jaxlm.data.target_vocab import check_options, target_of
from jaxlm.errors import UserError
from jaxlm.evaluate import evaluate, evaluate_on_task
from jaxlm.inference import trained
from jaxlm.inference.decode import SamplingConfig
from jaxlm.inference.seq2seq import generate_seq2seq
from jaxlm.models import EncDec
from jaxlm.sample import sample, sample_targets
from jaxlm.training import checkpoint, finetune
from jaxlm.training.engine import model_config
from jaxlm.training.loop import from_pretrained, train
from jaxlm.training.setup import set_up

SOURCE_VOCAB, TARGET_VOCAB = 300, 290  # unequal, so that a swapped side shows in the shapes


def separate_config(train_file, val_file):
  c = tiny_t5_config("")
  c.data.path, c.data.val_path, c.data.format = str(train_file), str(val_file), "seq2seq"
  c.data.separate_vocab, c.data.num_sentinels = True, 8
  c.data.vocab_size, c.data.target_vocab_size = SOURCE_VOCAB, TARGET_VOCAB
  c.data.target_len, c.train.steps, c.eval.every, c.checkpoint.every = 16, 4, 4, 4
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("separate_vocab")
  train_file, val_file = root / "train.jsonl", root / "val.jsonl"
  pairs = write_pairs(train_file, 64, 0)
  references = write_pairs(val_file, 8, 1)
  workdir = str(root / "run")
  metrics = train(separate_config(train_file, val_file), workdir)
  return workdir, metrics, pairs, references, val_file, train_file


def pieces(tokenizer) -> list[str]:
  """The learnt pieces of a SentencePiece model, read by sentencepiece itself (not jaxlm)."""
  sp = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto)
  return [sp.id_to_piece(i) for i in range(sp.get_piece_size())
          if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i))]


def test_each_tokenizer_learns_its_own_side(run):
  workdir, _, pairs = run[:3]
  source = load_tokenizer(f"{workdir}/tokenizer.json")
  target = load_tokenizer(f"{workdir}/target_tokenizer.json")
  assert (source.vocab_size, target.vocab_size) == (SOURCE_VOCAB, TARGET_VOCAB)
  for tokenizer, side in ((source, "source"), (target, "target")):
    seen = set("".join(p[side] for p in pairs)) | {"\u2581", "\n"}
    assert {c for piece in pieces(tokenizer) for c in piece} <= seen, side
    assert len(tokenizer.sentinel_ids) == 8  # both sides get span corruption's sentinels
  assert "z" in pieces(target) and "z" not in pieces(source)  # "zwei", "zehn": German only
  assert "zwei" not in set("".join(p["source"] for p in pairs))


def test_the_model_reads_sources_and_writes_targets_in_their_vocabularies(run):
  workdir = run[0]
  loaded = trained.load(workdir)
  d = loaded.model_cfg.d_model
  shapes = jax.tree.map(lambda x: x.shape, loaded.params)
  assert shapes["embedding"] == (SOURCE_VOCAB, d)
  assert shapes["decoder_embedding"] == (TARGET_VOCAB, d)
  assert shapes["head"] == (d, TARGET_VOCAB)
  target_json = json.load(open(f"{workdir}/target_tokenizer.json"))
  assert loaded.target_tokenizer.to_json() == target_json  # restored from the checkpoint
  _, _, state = checkpoint.restore_metadata(workdir)
  assert target_of(state).to_json() == target_json
  assert loaded.tokenizer.to_json() == json.load(open(f"{workdir}/tokenizer.json"))


def test_evaluate_encodes_targets_with_the_target_tokenizer(run):
  workdir, _, _, references, val_file = run[:5]
  target = load_tokenizer(f"{workdir}/target_tokenizer.json")
  source = load_tokenizer(f"{workdir}/tokenizer.json")
  metrics = evaluate(workdir, None, {})
  expected = sum(len(target.encode(r["target"])) + 1 for r in references)
  assert metrics["target_tokens"] == expected
  assert expected != sum(len(source.encode(r["target"])) + 1 for r in references)
  task = evaluate_on_task(workdir, None, {}, str(val_file), 6, "\n", "", 1)
  assert task["examples"] == len(references) and 0.0 <= task["bleu"] <= 100.0


def test_sample_encodes_sources_and_decodes_targets_in_their_vocabularies(run, monkeypatch):
  workdir = run[0]
  loaded = trained.load(workdir)
  source = load_tokenizer(f"{workdir}/tokenizer.json")
  target = load_tokenizer(f"{workdir}/target_tokenizer.json")
  source_ids = source.encode("one two") + [source.eos_id]
  greedy = SamplingConfig(6, temperature=0.0)
  ids = generate_seq2seq(loaded.params, loaded.model_cfg, [source_ids], greedy,
                         eos_id=target.eos_id)[0]
  assert max(ids, default=0) < TARGET_VOCAB
  assert sample(workdir, None, "", greedy, 1, 0, source="one two") == [target.decode(ids)]
  # Which tokenizer does what, with the model's output fixed: German pieces (an untrained model
  # writes byte pieces, whose ids the two vocabularies share).
  german = target.encode("zwei drei")
  assert source.decode(german) != "zwei drei"
  seen = []
  monkeypatch.setattr("jaxlm.sample.generate_seq2seq",
                      lambda params, cfg, sources, *args, **kwargs: seen.append(sources) or
                      [german] * len(sources))
  assert sample_targets(loaded, "one two", greedy, 1, 0, None) == ["zwei drei"]
  assert seen == [[source_ids]]


def test_a_finetune_reuses_both_tokenizers_and_embeddings(run, tmp_path):
  workdir = run[0]
  c = base_config()
  c.init_from = workdir
  c.data.update(source="files", path=str(run[5]), val_path=str(run[4]), format="seq2seq",
                seq_len=32, target_len=16)
  c.train.update(batch_size=8, steps=1, warmup_steps=1)
  c.eval.update(batch_size=8, sample_tokens=0)
  finetuned = set_up(c, str(tmp_path / "ft"), {}, lambda _: None)  # data and engine, no step
  for name in ("tokenizer.json", "target_tokenizer.json"):
    assert (tmp_path / "ft" / name).read_bytes() == open(f"{workdir}/{name}", "rb").read()
  params = from_pretrained(finetuned).params
  pretrained = trained.load(workdir).params
  for name in ("embedding", "decoder_embedding", "head"):
    np.testing.assert_array_equal(np.asarray(params[name]), np.asarray(pretrained[name]))
  with pytest.raises(UserError, match="data.separate_vocab"):
    finetune.inherit(c, checkpoint.restore_metadata(workdir)[1],
                     {"data.separate_vocab": False})


def test_export_to_t5_is_refused(run, tmp_path):
  with pytest.raises(UserError, match="T5 has one vocabulary") as error:
    to_hf(run[0], str(tmp_path / "hf"))
  check_message("t5_export_of_separate_vocabularies", error.value)


def test_a_tied_head_is_the_decoder_embedding():
  cfg = tiny_t5_config("")
  cfg.model.tie_embeddings = True
  model_cfg = model_config(cfg, 40, 24)
  model = EncDec(model_cfg)
  src = jnp.array([[5, 6, 7, 1]])  # source ids, some beyond the target vocabulary
  dec = jnp.array([[0, 3, 4]])
  kwargs = dict(encoder_inputs=src, encoder_positions=jnp.arange(4)[None],
                encoder_segment_ids=jnp.ones_like(src))
  args = (dec, jnp.arange(3)[None], jnp.ones_like(dec))
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), *args, **kwargs)["params"])
  assert "head" not in params and params["decoder_embedding"].shape == (24, 32)
  apply = jax.jit(lambda p: model.apply({"params": p}, *args, **kwargs))
  logits = apply(params)  # [1, 3, target vocab]
  assert logits.shape == (1, 3, 24)
  # The decoder reads only its own table: rows of the source table it is not given do nothing.
  unused = {**params, "embedding": params["embedding"].at[np.array([0, 3, 4])].set(9.0)}
  np.testing.assert_allclose(apply(unused), logits, atol=1e-6)
  # Tied: target id 20's logit moves with its embedding row, and no other logit does.
  moved = {**params, "decoder_embedding": params["decoder_embedding"].at[20].add(1.0)}
  delta = np.asarray(apply(moved) - logits)
  assert np.abs(delta[..., 20]).min() > 0 and np.abs(np.delete(delta, 20, -1)).max() < 1e-6


@pytest.mark.parametrize("case, options, fragment", cases(
    ("separate_vocab_on_a_gpt", (True, 0, "gpt", "text", "sentencepiece"), "this is a gpt run"),
    ("separate_vocab_with_span_corruption", (True, 0, "encdec", "text", "sentencepiece"),
     r"needs \(source, target\) pairs"),
    ("separate_vocab_with_char_tokenizer", (True, 0, "encdec", "seq2seq", "char"),
     "trains two SentencePiece models"),
    ("target_vocab_size_without_separate_vocab", (False, 512, "encdec", "seq2seq",
                                                  "sentencepiece"), "sizes a separate target"),
))
def test_options_that_cannot_work_are_refused(case, options, fragment):
  with pytest.raises(UserError, match=fragment) as error:
    check_options(*options)
  check_message(case, error.value)


def test_train_refuses_separate_vocabularies_for_a_gpt(tmp_path):
  result = train_tiny_gpt(tmp_path, "--config.data.separate_vocab=True")
  user_error(result, tmp_path, "separate_vocab_on_a_gpt", "data.separate_vocab=True")


def test_the_server_frames_sources_and_decodes_completions_in_their_vocabularies(run):
  """A served completion of a separate-vocabulary run is target ids: its text (streamed or not,
  and each logprob's token) is read with the target tokenizer, the prompt with the source one."""
  import asyncio  # noqa: PLC0415

  from jaxlm.serving.metrics import Metrics  # noqa: PLC0415
  from jaxlm.serving.protocol import CompletionRequest  # noqa: PLC0415
  from jaxlm.serving.service import Service  # noqa: PLC0415

  workdir = run[0]
  source = load_tokenizer(f"{workdir}/tokenizer.json")
  target = load_tokenizer(f"{workdir}/target_tokenizer.json")

  class Queue:  # the scheduler's side of the service: takes every request
    submitted = []

    def submit_all(self, requests):
      self.submitted.extend(requests)
      return True

  service = Service(source, Queue(), 32, "run", 32, "", Metrics(), seq2seq=True,
                    target_tokenizer=target)
  prompt = service.text_prompt("one two")
  assert prompt.ids == source.encode("one two") + [source.eos_id]
  german = target.encode("zwei drei")
  assert [service.token_text(t) for t in german] == [target.decode([t]) for t in german]
  assert service.token_text(target.eos_id) == "<eos>"

  async def generate():
    generation = service.start(CompletionRequest(model="run", prompt="one two"), [prompt], 8)
    stream = generation.sinks[0].stream
    for token in german:
      stream.push(token)
    return stream.text

  assert asyncio.run(generate()) == "zwei drei" != source.decode(german)


def test_the_memory_plan_sizes_both_vocabularies():
  """`plan` counts the encoder's source-vocabulary embedding, and the decoder's embedding and head
  of the target vocabulary (untied): d·V_source + 2·d·V_target, by hand, over the shared model."""
  from jaxlm.parallel.memory import memory_plan  # noqa: PLC0415
  shared = tiny_t5_config("")
  shared.data.vocab_size, shared.train.batch_size = SOURCE_VOCAB, 8
  separate = tiny_t5_config("")
  separate.data.vocab_size, separate.train.batch_size = SOURCE_VOCAB, 8
  separate.data.separate_vocab, separate.data.target_vocab_size = True, TARGET_VOCAB
  d = shared.model.d_model
  assert not shared.model.tie_embeddings  # T5 v1.1: the head has its own matrix
  extra = memory_plan(separate)["num_params"] - memory_plan(shared)["num_params"]
  # shared: embedding + head, both V_source; separate: + decoder embedding, head of V_target.
  assert extra == d * TARGET_VOCAB + d * (TARGET_VOCAB - SOURCE_VOCAB)
