"""The training state, the loss, and the pure train / eval / predict steps that the engine jits.

Every step first lets the objective (objectives.py) prepare the batch (masked LM: choose and mask
tokens), then takes one weighted cross-entropy over `targets` / `weights`. Keys: a micro-batch's
key is fold_in(step key, micro-batch index); masking and dropout fold it with distinct constants,
so turning dropout on or off leaves the masks alone. Evaluation masks with fold_in(key(EVAL_SEED),
batch number): the same numbers on every evaluation of the same parameters.
"""

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxlm.models import lora
from jaxlm.training.guard import Guard, select
from jaxlm.training.objectives import CAUSAL_LM, Objective
from jaxlm.training.optim import applied_lr

# inputs, targets, positions, segment_ids, token_types (optional): [..., batch, seq] int32;
# weights [..., batch, seq] float32. An encoder-decoder batch adds its source side, ENCODER_KEYS
# `[..., batch, enc_len]`; the keys above are then the decoder's (models/encdec.py).
Batch = dict[str, jax.Array]
ENCODER_KEYS = ("encoder_inputs", "encoder_positions", "encoder_segment_ids")
MASK_STREAM, DROPOUT_STREAM = 1, 2  # fold_in constants of a micro-batch's key
EVAL_SEED = 0


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32: steps taken (batches consumed), applied or refused by the guard
  params: Any
  opt_state: Any
  guard: Guard

  @classmethod
  def create(cls, params: Any, tx: optax.GradientTransformation,
             base_dtype: str | None = None) -> "TrainState":
    """Step 0 with fresh optimizer state for the trainable part of `params` (all of them, or
    only the LoRA adapters, the frozen rest then cast to `base_dtype`)."""
    if base_dtype is not None:
      params = lora.cast_frozen(params, base_dtype)
    return cls(step=jnp.array(0, jnp.int32), params=params,
               opt_state=tx.init(lora.split(params)[0]), guard=Guard.init())


def init_state(model: nn.Module, tx: optax.GradientTransformation, seed: int,
               seq_len: int) -> TrainState:
  """Fresh parameters (boxed with their logical axes) and optimizer state."""
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  # An encoder-decoder's parameters do not depend on the lengths: the source side takes the same.
  encoder = dict(zip(ENCODER_KEYS, (tokens, tokens, tokens + 1))) if is_seq2seq(model) else {}
  params = model.init(jax.random.key(seed), tokens, tokens, tokens + 1, **encoder)["params"]
  adapters = model.cfg.lora
  return TrainState.create(params, tx, adapters.base_dtype if adapters else None)


def is_seq2seq(model: nn.Module) -> bool:
  """Whether the model reads a source sequence besides its inputs (an encoder-decoder)."""
  return model.cfg.family == "encdec"


def token_losses(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-token cross-entropy and log-normaliser, both float32 `[batch, seq]`."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [batch, seq]
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return log_z - target_logit, log_z


def forward(params: Any, batch: Batch, model: nn.Module,
            dropout_key: jax.Array | None = None) -> jax.Array:
  """The model's float32 logits `[batch, seq, outputs]`; dropout only with a key."""
  encoder = {key: batch[key] for key in ENCODER_KEYS if key in batch}
  return model.apply({"params": params}, batch["inputs"], batch["positions"],
                     batch["segment_ids"], deterministic=dropout_key is None,
                     token_types=batch.get("token_types"),
                     rngs=None if dropout_key is None else {"dropout": dropout_key}, **encoder)


def loss_fn(params: Any, batch: Batch, model: nn.Module, z_loss: float,
            dropout_key: jax.Array | None):
  """Weighted mean cross-entropy (+ z-loss) of a prepared batch. Returns
  (loss, (nll_sum, weight_sum))."""
  logits = forward(params, batch, model, dropout_key)
  nll, log_z = token_losses(logits, batch["targets"])
  weights = batch["weights"].astype(jnp.float32)
  weight_sum = jnp.maximum(weights.sum(), 1.0)
  nll_sum = (nll * weights).sum()
  loss = (nll_sum + z_loss * (jnp.square(log_z) * weights).sum()) / weight_sum
  return loss, (nll_sum, weights.sum())


def train_step(state: TrainState, batch: Batch, *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: optax.Schedule, z_loss: float,
               seed: int, use_dropout: bool, spike_sigma: float = 0.0,
               objective: Objective = CAUSAL_LM) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update from a batch shaped `[accum_steps, micro_batch, seq]`.

  Gradients of the micro-batches are summed in a scan, so memory is that of one micro-batch; the
  result equals one big batch because losses are normalised by the total weight afterwards. The
  update is applied only if the guard (guard.py) accepts it. Only the trainable parameters (the
  LoRA adapters of a LoRA run, see models/lora.py) are differentiated and updated.
  """
  step_key = jax.random.fold_in(jax.random.key(seed), state.step)
  trainable, frozen = lora.split(state.params)
  grad_fn = jax.grad(lambda t, *args: loss_fn(lora.combine(t, frozen), *args), has_aux=True)

  def micro_step(grad_sum, micro):
    index, micro_batch = micro
    micro_key = jax.random.fold_in(step_key, index)
    micro_batch = objective.prepare(micro_batch, jax.random.fold_in(micro_key, MASK_STREAM))
    dropout_key = jax.random.fold_in(micro_key, DROPOUT_STREAM) if use_dropout else None
    # Gradient of the *sum* of token losses; dividing once at the end weights all tokens equally.
    grads, (nll_sum, weight_sum) = grad_fn(trainable, micro_batch, model, z_loss, dropout_key)
    scale = jnp.maximum(micro_batch["weights"].sum(), 1.0)
    grads = jax.tree.map(lambda g: g * scale, grads)
    grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
    return grad_sum, (nll_sum, weight_sum)

  accum_steps = batch["inputs"].shape[0]
  zeros = jax.tree.map(jnp.zeros_like, trainable)
  grad_sum, (nll_sums, weight_sums) = jax.lax.scan(
      micro_step, zeros, (jnp.arange(accum_steps), batch))
  total_weight = jnp.maximum(weight_sums.sum(), 1.0)
  grads = jax.tree.map(lambda g: g / total_weight, grad_sum)

  loss = nll_sums.sum() / total_weight
  grad_norm = optax.tree.norm(grads)
  apply, guard = state.guard.judge(state.step, loss, grad_norm, spike_sigma)
  updates, opt_state = tx.update(grads, state.opt_state, trainable)
  params = lora.combine(optax.apply_updates(trainable, updates), frozen)
  metrics = {
      "loss": loss,
      "grad_norm": grad_norm,
      "lr": applied_lr(state.opt_state, schedule),
      "tokens": weight_sums.sum(),
      "skipped": guard.skipped,
      "first_nonfinite": guard.first_nonfinite,
  }
  return TrainState(step=state.step + 1, params=select(apply, params, state.params),
                    opt_state=select(apply, opt_state, state.opt_state), guard=guard), metrics


def eval_step(params: Any, batch: Batch, index: jax.Array, *, model: nn.Module,
              objective: Objective = CAUSAL_LM) -> dict[str, jax.Array]:
  """Sums over a `[batch, seq]` batch: NLL (float32), and int32 counts of the scored tokens
  (weight_sum) and of their correct argmax predictions; evaluation weights are 0/1 masks.

  Masked-LM masks are fixed: each row's come from its window number (`batch["window"]  # [batch]`,
  see data.pipeline.eval_batches), so a window is masked alike in any batch, on any mesh and any
  number of processes; without window numbers, from `index  # [] int32`, the batch's number."""
  eval_key = jax.random.key(EVAL_SEED)
  if "window" in batch:
    batch = prepare_rows(objective, batch, batch["window"], eval_key)
  else:
    batch = objective.prepare(batch, jax.random.fold_in(eval_key, index))
  logits = forward(params, batch, model)
  nll, _ = token_losses(logits, batch["targets"])
  scored = batch["weights"] > 0  # [batch, seq]
  correct = (jnp.argmax(logits, axis=-1) == batch["targets"]) & scored  # [batch, seq]
  # Integer counts stay exact however many batches scoring.accumulate adds up.
  return {"nll_sum": jnp.where(scored, nll, 0.0).sum(), "weight_sum": scored.sum(dtype=jnp.int32),
          "correct_sum": correct.sum(dtype=jnp.int32)}


def prepare_rows(objective: Objective, batch: Batch, row_ids: jax.Array,
                 base_key: jax.Array) -> Batch:
  """`objective.prepare` row by row, row r with key fold_in(base_key, row_ids[r])."""
  rows = {name: value for name, value in batch.items() if name != "window"}

  def one_row(row: Batch, row_id: jax.Array) -> Batch:
    single = jax.tree.map(lambda x: x[None], row)  # [1, seq]: prepare works on batches
    prepared = objective.prepare(single, jax.random.fold_in(base_key, row_id))
    return jax.tree.map(lambda x: x[0], prepared)

  return jax.vmap(one_row)(rows, row_ids)


def predict_step(params: Any, batch: Batch, *, model: nn.Module) -> jax.Array:
  """The argmax prediction at every position, int32 `[batch, seq]` (labels for classify / tag)."""
  return jnp.argmax(forward(params, batch, model), axis=-1).astype(jnp.int32)
