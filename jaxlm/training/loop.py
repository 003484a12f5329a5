"""The training loop: config -> data -> sharded jitted step -> checkpoints, metrics and samples.

`python -m jaxlm.train` calls `train`; `setup.py` turns the config into data and an engine.
Rerunning the same command on the same workdir resumes from its latest checkpoint: parameters,
optimizer state, step and the data iterator's position all come back.
"""

import contextlib
import sys
import time

import jax
import ml_collections
import tqdm

from jaxlm import cli, report
from jaxlm.data.mixture import tokens_seen
from jaxlm.errors import UserError
from jaxlm.eval import summary
from jaxlm.eval.scoring import evaluate_sets
from jaxlm.inference.decode import SamplingConfig, generate
from jaxlm.parallel import sharding
from jaxlm.models import lora
from jaxlm.training import checkpoint, finetune, lora_run
from jaxlm.training.metrics import (
  MetricsWriter,
  encdec_flops_per_token,
  flops_per_token,
  param_count,
  peak_flops,
)
from jaxlm.training.preemption import Preemption
from jaxlm.training.prefetch import Prefetch
from jaxlm.training.setup import Run, set_up


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
  run = set_up(config, workdir, overrides or {}, log)
  run.started = started
  start_or_resume(run)
  run.writer = MetricsWriter(workdir, enabled=is_main)
  with contextlib.closing(run.mngr), contextlib.closing(run.writer):
    val_metrics, done, stopping = train_loop(run)
    if not val_metrics and not stopping:  # resumed a run that had already finished
      val_metrics = evaluate(run)
    run.mngr.wait_until_finished()
  if stopping:
    log(f"stopped at step {done}: checkpoint saved in {checkpoint.checkpoint_dir(workdir)}; "
        "rerun the same command to resume")
    return {"stopped_at": done}
  if is_main:
    log(f"report: {report.write_report(workdir)}")
  wall_seconds = time.perf_counter() - started
  log(f"done: {run.config.train.steps} steps in {wall_seconds:.1f} s (start-up, compilation and "
      f"evaluation included); checkpoints in {checkpoint.checkpoint_dir(workdir)}")
  return {**val_metrics, "wall_seconds": wall_seconds}


def start_or_resume(run: Run) -> None:
  """The state to train from: this run's latest checkpoint (finetune or not), else the pretrained
  parameters with a fresh optimizer, else a fresh initialisation."""
  start_step, pretrained, engine = checkpoint.latest_step(run.workdir), run.pretrained, run.engine
  if start_step is not None and not checkpoint.holds_optimizer_state(run.workdir, start_step):
    # An imported model (convert from-hf): parameters only, a fresh optimizer state from them.
    run.state = engine.from_params(checkpoint.restore_params(
        run.workdir, start_step, engine.abstract_state.params))
    run.iterator.set_state(checkpoint.restore_data_state(run.mngr, start_step))
    run.start_step = start_step
    run.log(f"started from the imported parameters in {checkpoint.checkpoint_dir(run.workdir)}")
  elif start_step is not None:
    # A LoRA checkpoint holds the adapters only: the base comes from the pretrained run.
    run.state, data_state = checkpoint.restore(run.mngr, start_step,
                                               lora_run.saved_state(engine.abstract_state))
    if lora_run.is_lora(run.config):
      base = from_pretrained(run).params
      lora_run.check_base(lora_run.read_record(run.workdir, start_step), run.lora_base,
                          run.workdir)
      run.state = run.state.replace(params=lora.combine(run.state.params, lora.split(base)[1]))
    run.iterator.set_state(data_state)
    run.start_step = start_step
    run.log(f"resumed from step {start_step} in {checkpoint.checkpoint_dir(run.workdir)}")
  elif pretrained:
    run.state = from_pretrained(run, log_notes=True)
  else:
    run.state = engine.init()
  axes = " x ".join(engine.train_batch_axes)
  run.log(f"model: {param_count(run.state.params):,} parameters; mesh {dict(engine.mesh.shape)}, "
          f"training batch split over {axes}, evaluation batch over "
          f"{' x '.join(engine.eval_batch_axes)}")
  run.log("parameter shardings:\n" + sharding.sharding_table(run.state.params))


def from_pretrained(run: Run, log_notes: bool = False):
  """Step 0 from the pretrained run's parameters (a LoRA run: with fresh adapters, and the base
  recorded in `run.lora_base`)."""
  pretrained, engine = run.pretrained, run.engine
  params, notes = finetune.restore_params(pretrained.workdir, pretrained.step,
                                          engine.abstract_state.params, engine.init().params,
                                          pretrained.config["model"]["max_len"])
  for note in notes if log_notes else ():
    run.log(note)
  state = engine.from_params(params)
  if lora_run.is_lora(run.config):
    run.lora_base = lora_run.base_record(pretrained.workdir, pretrained.step,
                                         lora.split(state.params)[1])
  return state


def step_flops_per_token(run: Run) -> float:
  """Training FLOPs per token of a row's `data.seq_len` (what tokens/s counts): for an
  encoder-decoder, per source token, its decoder rows (`data.target_len`, or span corruption's)
  included."""
  cfg, seq_len, params = run.engine.model.cfg, run.config.data.seq_len, run.state.params
  if cfg.family != "encdec":
    return flops_per_token(cfg, seq_len, params)
  target_len = (getattr(run.engine.objective, "target_len", 0) or run.config.data.target_len
                or seq_len)
  return encdec_flops_per_token(cfg, seq_len, target_len, params) * target_len / seq_len


def train_loop(run: Run) -> tuple[dict, int, bool]:
  """Steps from the start step to train.steps; (last validation metrics, steps done, stopped by a
  preemption request)."""
  config, engine = run.config, run.engine
  total, log_every = config.train.steps, config.train.log_every
  model_cfg = engine.model.cfg
  peak, peak_source = peak_flops(jax.devices()[0], model_cfg.dtype)
  run.log(f"MFU peak {peak / 1e12:.3g} TFLOP/s per device ({peak_source})")
  speed = Throughput(config.train.batch_size * config.data.seq_len, step_flops_per_token(run),
                     peak * jax.device_count())
  prefetched = Prefetch(run.iterator, run.feed.assemble)
  progress = tqdm.tqdm(total=total, initial=run.start_step, disable=jax.process_index() != 0,
                       desc="train", dynamic_ncols=True)
  val_metrics, done, stopping = {}, run.start_step, False
  with Preemption() as preemption, contextlib.closing(prefetched), contextlib.closing(progress):
    for step in range(run.start_step, total):
      with speed.waiting():  # time the loop waits for the next batch on the devices
        batch = next(prefetched)
      run.state, metrics = engine.train_step(run.state, batch)
      done = step + 1
      if step == run.start_step:  # compilation is not training throughput
        jax.block_until_ready(metrics)
        speed.restart()
      else:
        speed.steps += 1
      progress.update(1)
      stopping = preemption.agreed(done)
      if done % log_every == 0 or done == total or stopping:
        log_train(run, done, metrics, speed, progress, prefetched.state())
      if not stopping and ((config.eval.every and done % config.eval.every == 0) or done == total):
        val_metrics = evaluate(run, done)
        speed.restart()  # evaluation time is not training throughput
      if done % config.checkpoint.every == 0 or done == total or stopping:
        check_guard(jax.device_get({"first_nonfinite": run.state.guard.first_nonfinite}),
                    config.train.on_nonfinite)
        checkpoint.save(run.mngr, done, lora_run.saved_state(run.state),
                        lora_run.config_json(config, run.lora_base),
                        run.dataset.tokenizer_state(), prefetched.state())
      if stopping:
        break
  return val_metrics, done, stopping


def log_train(run: Run, step: int, metrics: dict, speed: "Throughput", progress,
              data_state: dict) -> None:
  """One train line: the step's metrics (a device sync), the window's speed and, for a mixture,
  the training tokens drawn so far from each source."""
  metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
  del metrics["tokens"]
  check_guard(metrics, run.config.train.on_nonfinite)
  metrics.update(speed.read())
  sources = run.dataset.sources
  if sources is not None and sources.schedule is not None:
    seen = tokens_seen(data_state, sources.names, run.config.data.seq_len)
    metrics.update(seen)
    every = run.config.eval.every
    if (every and step % every == 0) or step == run.config.train.steps:
      run.log(f"step {step}: training tokens seen " +
              ", ".join(f"{k.removeprefix('tokens_')} {v:,}" for k, v in seen.items()))
  run.writer.write(step, metrics)
  progress.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.2e}")


def evaluate(run: Run, step: int | None = None) -> dict[str, float]:
  """Validation metrics of the current parameters; during training also logged and written."""
  eval_start = time.perf_counter()
  config, dataset = run.config, run.dataset
  model_cfg = run.engine.model.cfg
  val_metrics = summary.select_sets(
      evaluate_sets(run.engine, run.state.params, dataset.val_sets(), config.eval.batch_size,
                    config.eval.max_batches), model_cfg.family, model_cfg.head)
  if step is None:
    return val_metrics
  now = time.perf_counter()
  # Timings for time-to-quality accounting (tools/ablate.py): seconds since start, and of this
  # evaluation.
  run.writer.write(step, {**val_metrics, "wall_seconds": now - run.started,
                          "eval_seconds": now - eval_start}, prefix="val")
  run.log(f"step {step}: val {summary.describe(val_metrics)}")
  if config.eval.sample_tokens and model_cfg.family == "gpt":  # an encoder does not generate
    text = sample_text(run.state.params, run.engine.model.cfg, dataset.tokenizer,
                       config.eval.sample_tokens, step)
    run.writer.text(step, "sample", text)
    run.log(f"sample at step {step}:\n{text}\n")
  return val_metrics


def check_guard(metrics: dict, on_nonfinite: str) -> None:
  """With train.on_nonfinite=stop, ends the run at the first non-finite step (never applied)."""
  first = int(metrics["first_nonfinite"])
  if on_nonfinite == "stop" and first >= 0:
    raise UserError(
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

