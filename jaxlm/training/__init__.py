"""Training: the state and step, optimizer, update guard, engine, loop, checkpoints, preemption
and the finetuning handoff."""
