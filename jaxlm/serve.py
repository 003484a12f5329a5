"""Serve a trained GPT or encoder-decoder over an OpenAI-compatible HTTP API, with continuous
batching.

    python -m jaxlm.serve --workdir=DIR [--step=N] [--host=127.0.0.1] [--port=8000] [--slots=16]
        [--api_key=KEY | JAXLM_API_KEY=KEY] [--shutdown_timeout=30] [--config.mesh.fsdp=...]

Routes: /v1/models, /v1/completions, /v1/chat/completions (streaming or not), /health, /metrics.
See README.md ("Serving") and jaxlm/serving/.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from jaxlm import cli
from jaxlm.config import base_config
from jaxlm.serving.server import ServeOptions, serve


def define_flags() -> None:
  config_flags.DEFINE_config_dict("config", base_config(),
                                  "Overrides of the run's config (mesh.*, model.dtype).")
  flags.DEFINE_string("workdir", None, "The training run's directory.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
  flags.DEFINE_integer("port", 8000, "TCP port (0: any free one, printed at start).")
  flags.DEFINE_integer("slots", 16, "Requests decoded together (rows of the KV cache).")
  flags.DEFINE_string("api_key", None, "Require 'Authorization: Bearer KEY' on /v1 routes "
                      "(default: $JAXLM_API_KEY; neither: no key).")
  flags.DEFINE_string("served_model_name", "", "The model's name in the API (default: the "
                      "workdir's name).")
  flags.DEFINE_integer("max_tokens", 0, "Largest max_tokens a request may ask (0: the context).")
  flags.DEFINE_integer("max_body_bytes", 1 << 20, "Largest request body, in bytes.")
  flags.DEFINE_integer("max_waiting", 256, "Requests that may wait for a slot; more get 429.")
  flags.DEFINE_integer("prefills_per_step", 1, "Prompts prefilled per token of a decode call "
                       "(per --decode_steps tokens: that many times more) while other requests "
                       "are generating.")
  flags.DEFINE_integer("decode_steps", 8, "Tokens each slot advances per compiled decode call "
                       "(streamed as one chunk): more amortise the host's per-call work, fewer "
                       "let new requests join sooner and stream smoother.")
  flags.DEFINE_float("shutdown_timeout", 30.0, "On SIGTERM, seconds in-flight requests may take "
                     "to finish.")


def main(argv):
  del argv
  f = flags.FLAGS

  def run():
    serve(ServeOptions(
        workdir=cli.require_workdir(f.workdir), step=f.step, host=f.host, port=f.port,
        slots=f.slots, api_key=f.api_key if f.api_key is not None else
        os.environ.get("JAXLM_API_KEY"), model_name=f.served_model_name, max_tokens=f.max_tokens,
        max_body_bytes=f.max_body_bytes, max_waiting=f.max_waiting,
        prefills_per_step=f.prefills_per_step, decode_steps=f.decode_steps,
        shutdown_timeout=f.shutdown_timeout,
        overrides=f["config"].override_values))

  cli.run(run, multihost=False)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
