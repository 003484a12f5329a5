"""Sample text from a trained run, with a KV cache.

    python -m jaxlm.sample --workdir=DIR --prompt="def main(" [--max_new_tokens=200]
        [--temperature=0.8] [--top_k=40] [--top_p=0.95] [--num_samples=2] [--seed=0]

The prompt is encoded with the run's own tokenizer after the start-of-document token. Each sample is
printed after a separator line; the last line of stdout is a JSON list of the samples.
"""

from absl import app, flags

from jaxlm import cli
from jaxlm.inference import trained
from jaxlm.inference.decode import SamplingConfig, generate


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The training run's directory.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("prompt", "", "Text to continue ('' = start a new document).")
  flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate per sample.")
  flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 = greedy.")
  flags.DEFINE_integer("top_k", 40, "Sample among the k likeliest tokens; 0 = all.")
  flags.DEFINE_float("top_p", 1.0, "Sample within the top-p probability mass; 1 = all.")
  flags.DEFINE_integer("num_samples", 1, "Samples, generated as one batch.")
  flags.DEFINE_integer("seed", 0, "Random seed.")


def sample(workdir: str, step: int | None, prompt: str, sampling: SamplingConfig,
           num_samples: int, seed: int) -> list[str]:
  trained.check_generative(workdir, step)
  run = trained.load(workdir, step)
  prompt_ids = [run.tokenizer.eos_id] + run.tokenizer.encode(prompt)
  outputs = generate(run.params, run.model_cfg, [prompt_ids] * num_samples, sampling, seed,
                     eos_id=run.tokenizer.eos_id)
  return [prompt + run.tokenizer.decode(ids) for ids in outputs]


def main(argv):
  del argv

  f = flags.FLAGS

  def run():
    sampling = SamplingConfig(f.max_new_tokens, f.temperature, f.top_k, f.top_p)
    texts = sample(cli.require_workdir(f.workdir), f.step, f.prompt, sampling, f.num_samples,
                   f.seed)
    for text in texts:
      print("-" * 40)
      print(text)
    print("-" * 40)
    cli.emit_json({"samples": texts})

  cli.run(run)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
