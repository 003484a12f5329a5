"""Pretrain a GPT: config -> data -> sharded jitted step -> checkpoints, metrics and samples.

    python -m jaxlm.train --config=configs/default.py --workdir=DIR [--config.train.lr=3e-4 ...]

Rerunning the same command on the same workdir resumes from its latest checkpoint: parameters,
optimizer state, step and the data iterator's position all come back.
"""

import contextlib
import functools
import sys
import time

import jax
import ml_collections
import tqdm
from absl import app, flags
from ml_collections import config_flags

from jaxlm import checkpoint, cli, finetune, report, sharding
from jaxlm.config import ConfigError, from_saved
from jaxlm.corpus import DataConfig, build_dataset, read_corpus, workdir_tokenizer
from jaxlm.data import train_batches
from jaxlm.data.records import PackedRecords
from jaxlm.decode import SamplingConfig, generate
from jaxlm.engine import build_engine
from jaxlm.metrics import MetricsWriter, flops_per_token, peak_flops
from jaxlm.optim import OptimConfig
from jaxlm.preemption import Preemption
from jaxlm.prefetch import Prefetch
from jaxlm.scoring import evaluate_split
from jaxlm.trained import model_config


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", "configs/default.py", "Training config file.")
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, tokenizer and logs.")


def check_config(config: ml_collections.ConfigDict) -> None:
  if config.data.seq_len > config.model.max_len:
    raise ConfigError(f"data.seq_len={config.data.seq_len} is longer than model.max_len="
                      f"{config.model.max_len}; raise model.max_len or lower data.seq_len")
  if config.train.steps <= 0:
    raise ConfigError(f"train.steps={config.train.steps} must be positive")
  if config.train.on_nonfinite not in ("skip", "stop"):
    raise ConfigError(f"train.on_nonfinite={config.train.on_nonfinite!r} is not one of skip, stop")


def check_resume(saved: dict, config: ml_collections.ConfigDict) -> None:
  """A resumed run must keep the architecture and data it was started with."""
  now = cli.config_to_json(config)
  differing = [f"{section}.{key}: {saved[section].get(key)!r} -> {value!r}"
               for section in ("model", "data") for key, value in now[section].items()
               if saved[section].get(key) != value]
  if differing:
    raise ConfigError("the workdir holds a run with other settings (" + "; ".join(differing) +
                      "); use a new --workdir or the original settings")


def train(config: ml_collections.ConfigDict, workdir: str,
          overrides: dict | None = None) -> dict[str, float]:
  """Runs (or resumes) training; returns the final validation metrics.

  `overrides` are the command-line `--config.*` values; with config.init_from they are checked
  against the pretrained architecture (see finetune.py).
  """
  started = time.perf_counter()
  cli.ensure_writable(workdir)
  is_main = jax.process_index() == 0
  # Logs go to stderr beside the progress bar; stdout carries only the final JSON line.
  log = (lambda text: tqdm.tqdm.write(text, file=sys.stderr)) if is_main else (lambda *_: None)
  pretrained = None
  if config.init_from:
    config, pretrained, notes = finetune.prepare(config, overrides or {})
    log(f"finetuning from step {pretrained.step} of {pretrained.workdir}" +
        "".join(f"\n  changed: {note}" for note in notes))
  check_config(config)

  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  accum = config.train.grad_accum_steps
  batch_axes = min(sharding.check_batch(config.train.batch_size, accum, mesh, "train.batch_size"),
                   sharding.check_batch(config.eval.batch_size, 1, mesh, "eval.batch_size"), key=len)

  data_cfg = DataConfig.from_config(config.data)
  start_step = checkpoint.latest_step(workdir)
  if start_step is not None:
    _, saved_config, _ = checkpoint.restore_metadata(workdir, start_step)
    check_resume(cli.config_to_json(from_saved(saved_config)), config)
  corpus = read_corpus(data_cfg)
  tokenizer = workdir_tokenizer(data_cfg, corpus, workdir,
                                pretrained.tokenizer if pretrained else None)
  dataset = build_dataset(data_cfg, corpus, tokenizer)
  log(f"data: {len(corpus.train)} train / {len(corpus.val)} val {data_cfg.resolved_format} "
      f"examples in {len(dataset.train):,} / {len(dataset.val):,} windows of {data_cfg.seq_len} "
      f"tokens; {tokenizer.kind} tokenizer of {tokenizer.vocab_size} ids")
  if isinstance(dataset.train, PackedRecords):
    log(f"records longer than data.seq_len: train {dataset.train.truncated} truncated / "
        f"{dataset.train.dropped} dropped, val {dataset.val.truncated} / {dataset.val.dropped}")

  model_cfg = model_config(config, tokenizer.vocab_size)
  engine = build_engine(model_cfg, OptimConfig.from_config(config.train), mesh, config.mesh.rules,
                        config.train.seed, data_cfg.seq_len, config.train.z_loss, batch_axes,
                        config.train.spike_sigma)
  batches = train_batches(dataset.train, config.train.batch_size, config.train.seed,
                          jax.process_index(), jax.process_count())
  iterator = iter(batches)
  mngr = checkpoint.manager(workdir, keep=config.checkpoint.keep)
  if start_step is not None:  # this run's own checkpoint wins, finetune or not
    state, data_state = checkpoint.restore(mngr, start_step, engine.abstract_state)
    iterator.set_state(data_state)
    log(f"resumed from step {start_step} in {checkpoint.checkpoint_dir(workdir)}")
  elif pretrained:
    params = finetune.restore_params(pretrained.workdir, pretrained.step,
                                     engine.abstract_state.params, engine.init().params,
                                     pretrained.config["model"]["max_len"])
    start_step, state = 0, engine.from_params(params)
  else:
    start_step, state = 0, engine.init()

  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  token_flops = flops_per_token(model_cfg, data_cfg.seq_len, state.params)
  peak, peak_source = peak_flops(jax.devices()[0])
  log(f"model: {num_params:,} parameters; mesh {dict(mesh.shape)}, batch split over "
      f"{' x '.join(batch_axes)}; MFU peak "
      f"{peak / 1e12:.3g} TFLOP/s per device ({peak_source})")
  log("parameter shardings:\n" + sharding.sharding_table(state.params))

  writer = MetricsWriter(workdir, enabled=is_main)
  config_json, tokenizer_json = cli.config_to_json(config), tokenizer.to_json()
  batch_spec = engine.batch_sharding(leading_dims=1)
  prefetched = Prefetch(iterator, functools.partial(sharding.global_micro_batches, accum=accum,
                                                    sharding=batch_spec))
  total, log_every = config.train.steps, config.train.log_every
  progress = tqdm.tqdm(total=total, initial=start_step, disable=not is_main, desc="train",
                       dynamic_ncols=True)
  speed = Throughput(config.train.batch_size * data_cfg.seq_len, token_flops,
                     peak * jax.device_count())
  val_metrics, done, stopping = {}, start_step, False
  with Preemption() as preemption, contextlib.closing(prefetched):
    for step in range(start_step, total):
      with speed.waiting():  # time the loop waits for the next batch on the devices
        batch = next(prefetched)
      state, metrics = engine.train_step(state, batch)
      done = step + 1
      speed.steps += 1
      progress.update(1)
      stopping = (jax.process_count() == 1 or done % log_every == 0) and preemption.agreed()

      if done % log_every == 0 or done == total or stopping:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        del metrics["tokens"]
        check_guard(metrics, config.train.on_nonfinite)
        metrics.update(speed.read())
        writer.write(done, metrics)
        progress.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.2e}")

      if not stopping and ((config.eval.every and done % config.eval.every == 0) or done == total):
        eval_start = time.perf_counter()
        val_metrics = evaluate_split(engine, state.params, dataset.val, config.eval.batch_size,
                                     config.eval.max_batches, dataset.val_bytes_per_token)
        now = time.perf_counter()
        # Timings for time-to-quality accounting (tools/ablate.py): seconds since start, and of this
        # evaluation.
        writer.write(done, {**val_metrics, "wall_seconds": now - started,
                            "eval_seconds": now - eval_start}, prefix="val")
        log(f"step {done}: val loss {val_metrics['loss']:.4f} perplexity "
            f"{val_metrics['perplexity']:.3f} bits/byte {val_metrics['bits_per_byte']:.4f}")
        if config.eval.sample_tokens:
          text = sample_text(state.params, model_cfg, tokenizer, config.eval.sample_tokens, done)
          writer.text(done, "sample", text)
          log(f"sample at step {done}:\n{text}\n")
        speed.restart()  # evaluation time is not training throughput

      if done % config.checkpoint.every == 0 or done == total or stopping:
        check_guard(jax.device_get({"first_nonfinite": state.guard.first_nonfinite}),
                    config.train.on_nonfinite)
        checkpoint.save(mngr, done, state, config_json, tokenizer_json, prefetched.state())
      if stopping:
        break
  progress.close()
  if not val_metrics and not stopping:  # resumed a run that had already finished
    val_metrics = evaluate_split(engine, state.params, dataset.val, config.eval.batch_size,
                                 config.eval.max_batches, dataset.val_bytes_per_token)
  mngr.wait_until_finished()
  mngr.close()
  writer.close()
  if stopping:
    log(f"stopped at step {done}: checkpoint saved in {checkpoint.checkpoint_dir(workdir)}; "
        "rerun the same command to resume")
    return {"stopped_at": done}
  if is_main:
    log(f"report: {report.write_report(workdir)}")
  wall_seconds = time.perf_counter() - started
  log(f"done: {total} steps in {wall_seconds:.1f} s (start-up, compilation and evaluation "
      f"included); checkpoints in {checkpoint.checkpoint_dir(workdir)}")
  return {**val_metrics, "wall_seconds": wall_seconds}


def check_guard(metrics: dict, on_nonfinite: str) -> None:
  """With train.on_nonfinite=stop, ends the run at the first non-finite step (never applied)."""
  first = int(metrics["first_nonfinite"])
  if on_nonfinite == "stop" and first >= 0:
    raise FloatingPointError(
        f"non-finite loss or gradient at step {first + 1}; that update was not applied and no "
        "checkpoint holds it; lower train.lr, raise train.warmup_steps, or set "
        "train.on_nonfinite=skip")


class Throughput:
  """Tokens/s, step time, MFU and the share of time spent waiting for data, per log window."""

  def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float):
    self.tokens_per_step, self.flops_per_token, self.peak = (tokens_per_step, flops_per_token,
                                                             peak_flops)
    self.restart()

  def restart(self) -> None:
    self.start, self.steps, self.wait = time.perf_counter(), 0, 0.0

  @contextlib.contextmanager
  def waiting(self):
    start = time.perf_counter()
    yield
    self.wait += time.perf_counter() - start

  def read(self) -> dict[str, float]:
    """The window's numbers (callers read after a device sync); starts the next window."""
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    tokens_per_sec = self.steps * self.tokens_per_step / elapsed
    numbers = {"tokens_per_sec": tokens_per_sec, "step_time": elapsed / max(self.steps, 1),
               "host_wait": self.wait / elapsed,
               "mfu": tokens_per_sec * self.flops_per_token / self.peak}
    self.restart()
    return numbers


def sample_text(params, model_cfg, tokenizer, num_tokens: int, seed: int) -> str:
  """A short unconditional sample (from the start-of-document token) for the log."""
  num_tokens = min(num_tokens, model_cfg.max_len - 1)
  tokens = generate(params, model_cfg, [[tokenizer.eos_id]],
                    SamplingConfig(max_new_tokens=num_tokens, temperature=0.8, top_k=40),
                    seed=seed, eos_id=tokenizer.eos_id)[0]
  return tokenizer.decode(tokens)


def main(argv):
  del argv
  f = flags.FLAGS
  cli.run(lambda: cli.emit_json(train(f.config, cli.require_workdir(f.workdir),
                                      f["config"].override_values)),
          cpu_devices=f.config.mesh.cpu_devices)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
