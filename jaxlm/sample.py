"""Sample text from a trained run, with a KV cache.

    python -m jaxlm.sample --workdir=DIR --prompt="def main(" [--max_new_tokens=200]
        [--temperature=0.8] [--top_k=40] [--top_p=0.95] [--num_samples=2] [--seed=0]
    python -m jaxlm.sample --workdir=DIR --prompt="def main(" --beam_size=4
        [--length_penalty=1.0] [--early_stopping=false|true|never] [--num_samples=2]

With --beam_size above 1 the text is beam search's best hypothesis (the --num_samples best ones),
scored as transformers' `generate(num_beams=...)` scores them; beam search does not sample, so
--temperature, --top_k and --top_p are refused with it.

An encoder-decoder run (model.family=encdec) generates a target for a source instead:

    python -m jaxlm.sample --workdir=DIR --source="Open file" [--beam_size=4] [--temperature=0]

The prompt is encoded with the run's own tokenizer after the start-of-document token (a source:
followed by EOS, as training packs it; targets are decoded with a separate-vocabulary run's
target tokenizer). Each sample is printed after a separator line; the last
line of stdout is a JSON list of the samples.
"""

import dataclasses

from absl import app, flags

from jaxlm import cli
from jaxlm.errors import UserError
from jaxlm.inference import trained
from jaxlm.inference.beam import BeamConfig, check_beam_config
from jaxlm.inference.decode import SamplingConfig, beam_generate, generate
from jaxlm.inference.seq2seq import generate_seq2seq
from jaxlm.inference.seq2seq_beam import beam_seq2seq

# Flag value -> BeamConfig.early_stopping (transformers' True, False and "never").
EARLY_STOPPING = {"false": False, "true": True, "never": "never"}


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The training run's directory.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("prompt", "", "Text to continue ('' = start a new document).")
  flags.DEFINE_string("source", None, "An encoder-decoder run's input (a sentence to translate, "
                      "a document to summarise): the samples are its targets.")
  flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate per sample.")
  flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 = greedy.")
  flags.DEFINE_integer("top_k", 40, "Sample among the k likeliest tokens; 0 = all.")
  flags.DEFINE_float("top_p", 1.0, "Sample within the top-p probability mass; 1 = all.")
  flags.DEFINE_integer("num_samples", 1, "Samples, generated as one batch.")
  flags.DEFINE_integer("seed", 0, "Random seed.")
  flags.DEFINE_integer("beam_size", 1, "Beam search with this many beams; 1 = sample (or greedy "
                       "with --temperature=0).")
  flags.DEFINE_float("length_penalty", 1.0, "Beam search scores sum_logprobs / length ** this "
                     "(> 0 favours longer texts).")
  flags.DEFINE_enum("early_stopping", "false", list(EARLY_STOPPING),
                    "Beam search: true = stop once beam_size hypotheses end; false = once none "
                    "can beat them at the current length; never = at the longest length.")


def beam_options(f: flags.FlagValues) -> BeamConfig | None:
  """The beam search the flags ask for (None: sampling), or UserError for flags that conflict.
  Its eos_id is left for `sample` to set from the run's tokenizer."""
  beam = BeamConfig(f.beam_size, f.max_new_tokens, f.length_penalty,
                    EARLY_STOPPING[f.early_stopping])
  if f.beam_size == 1:
    given = [name for name in ("length_penalty", "early_stopping") if f[name].present]
    if given:
      raise UserError(f"--{given[0]} only applies to beam search; add --beam_size=2 or more, "
                      f"or drop --{given[0]}")
    return None
  check_beam_config(beam)
  sampling_off = {"temperature": 0.0, "top_k": 0, "top_p": 1.0}
  sampling = [f"--{name}={f[name].value}" for name, off in sampling_off.items()
              if f[name].present and f[name].value != off]
  if sampling:
    raise UserError(f"{sampling[0]} samples, but beam search (--beam_size={f.beam_size}) does "
                    "not; drop --temperature, --top_k and --top_p, or use --beam_size=1")
  if f.num_samples > f.beam_size:
    raise UserError(f"--num_samples={f.num_samples} is more than the --beam_size={f.beam_size} "
                    "hypotheses beam search keeps; lower --num_samples or raise --beam_size")
  return beam


def check_inputs(family: str, prompt: str, source: str | None) -> None:
  if family == "encdec" and source is None:
    raise UserError("this run is an encoder-decoder: give the text to transform as --source=... "
                    "(--prompt continues a gpt run's text)")
  if family == "encdec" and prompt:
    raise UserError("--prompt continues a gpt run's text; an encoder-decoder reads --source "
                    "alone: drop --prompt")
  if family != "encdec" and source is not None:
    raise UserError(f"--source is an encoder-decoder's input, and this is a {family} run; give "
                    "--prompt instead")


def sample_targets(run: trained.TrainedRun, source: str, sampling: SamplingConfig,
                   num_samples: int, seed: int, beam: BeamConfig | None) -> list[str]:
  """An encoder-decoder's targets for `source` (`source + [EOS]` as training packs it), encoded
  with the source tokenizer and decoded with the target one (the same one when shared)."""
  eos_id = run.target_tokenizer.eos_id  # where a target ends
  source_ids = run.tokenizer.encode(source)[:run.model_cfg.max_len - 1] + [run.tokenizer.eos_id]
  if beam is not None:
    beam = dataclasses.replace(beam, eos_id=eos_id)
    outputs = beam_seq2seq(run.params, run.model_cfg, [source_ids], beam, num_samples)[0]
  else:
    outputs = generate_seq2seq(run.params, run.model_cfg, [source_ids] * num_samples, sampling,
                               seed, eos_id=eos_id)
  return [run.target_tokenizer.decode(ids) for ids in outputs]


def sample(workdir: str, step: int | None, prompt: str, sampling: SamplingConfig,
           num_samples: int, seed: int, beam: BeamConfig | None = None,
           source: str | None = None) -> list[str]:
  """`num_samples` continuations of `prompt`: sampled, or beam search's best (`beam`, whose
  eos_id is the run's)."""
  family = trained.check_generative(workdir, step)[1]["model"].get("family", "gpt")
  check_inputs(family, prompt, source)
  run = trained.load(workdir, step)
  if family == "encdec":
    return sample_targets(run, source, sampling, num_samples, seed, beam)
  prompt_ids = [run.tokenizer.eos_id] + run.tokenizer.encode(prompt)
  if beam is not None:
    beam = dataclasses.replace(beam, eos_id=run.tokenizer.eos_id)
    outputs = beam_generate(run.params, run.model_cfg, [prompt_ids], beam, num_samples)[0]
  else:
    outputs = generate(run.params, run.model_cfg, [prompt_ids] * num_samples, sampling, seed,
                       eos_id=run.tokenizer.eos_id)
  return [prompt + run.tokenizer.decode(ids) for ids in outputs]


def main(argv):
  del argv

  f = flags.FLAGS

  def run():
    sampling = SamplingConfig(f.max_new_tokens, f.temperature, f.top_k, f.top_p)
    beam = beam_options(f)  # checked before the run is loaded
    texts = sample(cli.require_workdir(f.workdir), f.step, f.prompt, sampling, f.num_samples,
                   f.seed, beam, f.source)
    for text in texts:
      print("-" * 40)
      print(text)
    print("-" * 40)
    cli.emit_json({"samples": texts})

  cli.run(run)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
