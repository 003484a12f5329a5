"""Multi-host start-up on JAX's own runtime (`jax.distributed`), before any device is touched.

Every process of a multi-host job runs the same command. How the processes find each other:
  explicit   --coordinator_address=HOST:PORT --num_processes=N --process_id=I on each process
             (or the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID);
  automatic  with none of these, `jax.distributed.initialize()` asks JAX to detect a cluster
             (Cloud TPU pod slices, SLURM `srun`, Open MPI `mpirun`); where it finds none, the run is
             a plain single process and nothing is initialised.
On CPU, processes exchange data with gloo collectives (JAX's default CPU implementation).
"""

import os

import jax
from absl import flags

from jaxlm.errors import UserError

flags.DEFINE_string("coordinator_address", None,
                    "HOST:PORT of process 0's coordinator, for multi-host runs "
                    "(default: $JAX_COORDINATOR_ADDRESS, or detected on TPU pods / SLURM / MPI).")
flags.DEFINE_integer("num_processes", None,
                     "Processes in a multi-host run (default: $JAX_NUM_PROCESSES, or detected).")
flags.DEFINE_integer("process_id", None,
                     "This process's index in [0, num_processes) (default: $JAX_PROCESS_ID, or "
                     "detected).")

ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}


def settings(coordinator_address: str | None, num_processes: int | None,
             process_id: int | None, environ=os.environ) -> dict | None:
  """The explicit settings (flags, else environment), or None when none is given (auto-detect).

  A partial set is an error: a process that guesses the rest would hang waiting for its peers.
  """
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  for name, var in ENV.items():
    if given[name] is None and environ.get(var):
      given[name] = environ[var] if name == "coordinator_address" else _env_int(var, environ[var])
  if all(value is None for value in given.values()):
    return None
  missing = [f"--{name}" for name, value in given.items() if value is None]
  if missing:
    raise UserError(f"multi-host start-up needs {', '.join(missing)} as well (or "
                      f"{', '.join(ENV[m[2:]] for m in missing)}); give all of --coordinator_address, "
                      "--num_processes and --process_id, or none of them for a single process")
  if given["num_processes"] < 1 or not 0 <= given["process_id"] < given["num_processes"]:
    raise UserError(f"--process_id={given['process_id']} must be in [0, --num_processes="
                      f"{given['num_processes']}); number the processes 0 .. num_processes - 1")
  if ":" not in given["coordinator_address"]:
    raise UserError(f"--coordinator_address={given['coordinator_address']!r} needs a port: "
                      "HOST:PORT of process 0, e.g. 10.0.0.1:1234")
  return given


def _env_int(var: str, value: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise UserError(f"{var}={value!r} is not an integer; set it to a whole number") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins the multi-host job described by the arguments or detected by JAX; else does nothing."""
  explicit = settings(coordinator_address, num_processes, process_id)
  if explicit is not None:
    # Explicit means explicit: no cluster detection, which under SLURM would also narrow each
    # process to one GPU; every local device stays visible.
    jax.distributed.initialize(**explicit, cluster_detection_method="deactivate")
    return
  try:
    jax.distributed.initialize()
  except ValueError:
    # JAX found no cluster (it says "coordinator_address should be defined"): one process.
    pass


def initialize_from_flags() -> None:
  f = flags.FLAGS
  initialize(f.coordinator_address, f.num_processes, f.process_id)
