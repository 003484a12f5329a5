"""Pretrain or finetune a model: config -> data -> sharded jitted step -> checkpoints.

    python -m jaxlm.train --config=configs/default.py --workdir=DIR [--config.train.lr=3e-4 ...]

Rerunning the same command on the same workdir resumes from its latest checkpoint: parameters,
optimizer state, step and the data iterator's position all come back. The loop itself is
`jaxlm/training/loop.py`.
"""

from absl import app, flags
from ml_collections import config_flags

from jaxlm import cli
from jaxlm.training.loop import train


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", "configs/default.py", "Training config file.")
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, tokenizer and logs.")


def main(argv):
  del argv
  f = flags.FLAGS
  cli.run(lambda: cli.emit_json(train(f.config, cli.require_workdir(f.workdir),
                                      f["config"].override_values)),
          cpu_devices=f.config.mesh.cpu_devices)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
