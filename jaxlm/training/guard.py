"""The update guard, inside the jitted step: non-finite losses or gradients, and loss spikes.

An update is applied only when the loss and the gradient norm are finite and, with the spike guard
on, the loss is at most `spike_sigma` standard deviations above its running mean. A refused update
leaves parameters and optimizer state exactly as they were, so no non-finite value ever reaches
them or a checkpoint. The guard counts refusals and remembers the first non-finite step, which
`train.py` reports (and, with train.on_nonfinite=stop, stops on).
"""

import flax.struct
import jax
import jax.numpy as jnp

DECAY = 0.99  # running loss statistics average over about the last 100 applied updates
MIN_UPDATES = 20  # the spike guard waits for this many applied updates before judging


@flax.struct.dataclass
class Guard:
  skipped: jax.Array  # [] int32: updates refused so far
  first_nonfinite: jax.Array  # [] int32: step of the first non-finite loss or gradient; -1 none
  applied: jax.Array  # [] int32: updates applied (for the bias correction of the running stats)
  loss_mean: jax.Array  # [] float32: running mean of the loss (biased towards 0 early on)
  loss_sq_mean: jax.Array  # [] float32: running mean of the squared loss

  @classmethod
  def init(cls) -> "Guard":
    return cls(skipped=jnp.array(0, jnp.int32), first_nonfinite=jnp.array(-1, jnp.int32),
               applied=jnp.array(0, jnp.int32), loss_mean=jnp.array(0.0, jnp.float32),
               loss_sq_mean=jnp.array(0.0, jnp.float32))

  def is_spike(self, loss: jax.Array, spike_sigma: float) -> jax.Array:
    if spike_sigma <= 0:
      return jnp.array(False)
    correction = 1.0 - DECAY ** jnp.maximum(self.applied, 1).astype(jnp.float32)
    mean = self.loss_mean / correction
    std = jnp.sqrt(jnp.maximum(self.loss_sq_mean / correction - mean**2, 0.0))
    return (self.applied >= MIN_UPDATES) & (loss > mean + spike_sigma * std)

  def judge(self, step: jax.Array, loss: jax.Array, grad_norm: jax.Array,
            spike_sigma: float) -> tuple[jax.Array, "Guard"]:
    """(apply this update?, the guard after this step)."""
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    apply = finite & ~self.is_spike(loss, spike_sigma)
    safe_loss = jnp.where(apply, loss, 0.0)
    blend = lambda old, new: jnp.where(apply, DECAY * old + (1 - DECAY) * new, old)
    return apply, Guard(
        skipped=self.skipped + (~apply).astype(jnp.int32),
        first_nonfinite=jnp.where(~finite & (self.first_nonfinite < 0), step,
                                  self.first_nonfinite),
        applied=self.applied + apply.astype(jnp.int32),
        loss_mean=blend(self.loss_mean, safe_loss),
        loss_sq_mean=blend(self.loss_sq_mean, safe_loss**2))


def select(apply: jax.Array, new, old):
  """`new` where the update is applied, else `old`, leaf by leaf."""
  return jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
