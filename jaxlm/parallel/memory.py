"""Ahead-of-time memory plan of a config's train step (see `python -m jaxlm.plan`)."""

import math
import re
import time

import jax
import ml_collections
import numpy as np

from jaxlm.errors import UserError
from jaxlm.models import lora
from jaxlm.training.engine import engine_for_config
from jaxlm.training.metrics import param_count
from jaxlm.training.setup import check_config

# Codegen effort does not change buffer assignment, and halves compile time on a small CPU.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# XLA:CPU computes every bfloat16 op in float32, the dynamic-slice that hands a scanned layer its
# weights included; loop-invariant code motion then hoists the float32 convert of the *whole*
# `[layers, ...]` stack out of the layer loop. That is a float32 copy of every bfloat16 weight,
# live for the whole step (twice a LoRA run's frozen base: 25 GiB at 7B), which a GPU or TPU
# compile, slicing bfloat16 as it is, never makes. Without the hoist the convert fuses into the
# one layer's slice. Only a plan with bfloat16 parameters (a LoRA run's base) compiles so: with
# float32 parameters the hoists are what an accelerator's compiler makes too (e.g. the bf16 copy
# of the weights taken out of the accumulation loop), and leaving them out would under-count.
NO_HOIST_COMPILE = {**FAST_COMPILE, "xla_disable_hlo_passes": "while-loop-invariant-code-motion"}
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: str) -> int:
  """'80GB' -> 80e9, '16GiB' -> 16 * 2**30, '1024' -> 1024."""
  match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
  if not match or match.group(2).upper() not in UNITS:
    raise UserError(f"--device_memory={text!r} is not a size; write e.g. 80GB, 16GiB or 512MB")
  return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (from the shard shapes)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def abstract_batch(accum: int, batch_size: int, seq_len: int, batch_spec,
                   token_types: bool = False, targets: bool = True) -> dict:
  """The train step's batch, `[accum, micro_batch, seq]` per field, as packing produces it.

  Only the fields the step reads: jit drops an unused argument, so the compiled step holds token
  types only for a model with a type embedding, and no targets for masked LM (its targets are the
  inputs)."""
  shape = (accum, batch_size // accum, seq_len)
  dtypes = {"inputs": np.int32, "positions": np.int32, "segment_ids": np.int32,
            "weights": np.float32}
  if targets:
    dtypes["targets"] = np.int32
  if token_types:
    dtypes["token_types"] = np.int32
  return {name: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_spec)
          for name, dtype in dtypes.items()}


def memory_plan(config: ml_collections.ConfigDict, device_memory: int | None = None) -> dict:
  """Compiles the train step of `config` for the current devices and measures it, per device."""
  check_config(config)
  accum = config.train.grad_accum_steps
  data = config.data
  target_vocab = (data.target_vocab_size or data.vocab_size) if data.separate_vocab else 0
  engine = engine_for_config(config, data.vocab_size, target_vocab_size=target_vocab)
  mesh, batch_axes = engine.mesh, engine.train_batch_axes
  batch = abstract_batch(accum, config.train.batch_size, config.data.seq_len,
                         engine.train_feed(config.train.batch_size, accum).sharding,
                         token_types=config.model.type_vocab_size > 0,
                         targets=(config.model.family, config.model.head) != ("bert", "lm"))
  start = time.perf_counter()
  jitted = engine.train_step.__wrapped__  # the jax.jit object inside the mesh-context wrapper
  with engine.context():
    bf16_base = config.train.lora.rank > 0 and config.train.lora.base_dtype == "bfloat16"
    options = NO_HOIST_COMPILE if bf16_base else FAST_COMPILE
    compiled = jitted.lower(engine.abstract_state, batch).compile(options)
  stats = compiled.memory_analysis()
  peak = (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
          + stats.temp_size_in_bytes)
  state = engine.abstract_state
  return {
      "devices": mesh.size,
      "mesh": dict(mesh.shape),
      "batch_axes": list(batch_axes),
      "num_params": param_count(state.params),
      "micro_batch": config.train.batch_size // accum,
      # Sequences each batch shard (one device, or `tensor` devices sharing them) runs at a time.
      "sequences_per_batch_shard": config.train.batch_size // accum
                                   // math.prod(mesh.shape[a] for a in batch_axes),
      "params_bytes": per_device_bytes(state.params),
      # What is trained (all parameters, or a LoRA run's adapters) and its gradients, which are
      # part of the temporaries below.
      "trainable_params": param_count(lora.split(state.params)[0]),
      "grads_bytes": per_device_bytes(lora.split(state.params)[0]),
      # Optimizer state, with the step counter and the update guard's few scalars.
      "opt_state_bytes": per_device_bytes((state.opt_state, state.step, state.guard)),
      "batch_bytes": per_device_bytes(batch),
      "argument_bytes": stats.argument_size_in_bytes,
      "temp_bytes": stats.temp_size_in_bytes,
      "peak_bytes": peak,
      "device_memory_bytes": device_memory,
      "fits": None if device_memory is None else peak <= device_memory,
      "compile_seconds": time.perf_counter() - start,
  }


def human(num_bytes: float) -> str:
  for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if num_bytes >= size:
      return f"{num_bytes / size:.2f} {unit}"
  return f"{int(num_bytes)} B"


COMPARED = (("parameters", "params_bytes"), ("gradients (in temporaries)", "grads_bytes"),
            ("optimizer state", "opt_state_bytes"), ("batch", "batch_bytes"),
            ("activations + temporaries", "temp_bytes"), ("peak", "peak_bytes"))


def format_comparison(full: dict, adapted: dict) -> str:
  """A full finetune's plan beside a LoRA run's, per device."""
  lines = [f"full finetune vs LoRA: {full['num_params'] / 1e6:,.1f}M parameters, "
           f"{adapted['trainable_params'] / 1e6:,.2f}M trained by LoRA "
           f"({adapted['trainable_params'] / full['num_params']:.2%})",
           f"  {'per device':<27}{'full finetune':>22}{'LoRA':>22}"]
  lines += [f"  {name:<27}{human(full[key]):>22}{human(adapted[key]):>22}"
            for name, key in COMPARED]
  if full["fits"] is not None:
    verdict = {True: "fits", False: "does NOT fit"}
    lines.append(f"  in {human(full['device_memory_bytes'])}: full finetune "
                 f"{verdict[full['fits']]}, LoRA {verdict[adapted['fits']]}")
  return "\n".join(lines)


def format_plan(plan: dict) -> str:
  mesh = " x ".join(f"{axis}={size}" for axis, size in plan["mesh"].items())
  rows = [("parameters", plan["params_bytes"]), ("optimizer state", plan["opt_state_bytes"]),
          ("batch", plan["batch_bytes"]), ("activations + temporaries", plan["temp_bytes"]),
          ("peak", plan["peak_bytes"])]
  title = (f"memory plan: {plan['num_params'] / 1e6:,.1f}M parameters on {plan['devices']} devices, "
           f"mesh {mesh}; micro-batches of {plan['micro_batch']} sequences split over "
           f"{' x '.join(plan['batch_axes'])}, {plan['sequences_per_batch_shard']} per shard")
  lines = [title, f"  {'per device':<27}{'bytes':>16}"]
  lines += [f"  {name:<27}{value:>16,}  {human(value)}" for name, value in rows]
  if plan["fits"] is not None:
    verdict = "fits" if plan["fits"] else "does NOT fit"
    lines.append(f"  {verdict} in {human(plan['device_memory_bytes'])} per device "
                 f"(peak is {plan['peak_bytes'] / plan['device_memory_bytes']:.0%} of it)")
  lines.append(f"  (compiled for CPU in {plan['compile_seconds']:.1f}s; temporaries are the CPU "
               "compiler's, an estimate for GPU/TPU)")
  return "\n".join(lines)

