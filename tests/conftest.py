"""Test set-up: 8 simulated CPU devices and a persistent compilation cache, before jax is imported."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's own fast-compile mode for tests (LLVM at -O0, no expensive LLVM passes; JAX's test suite uses
# it too): the same HLO and assertions, but compiling is most of this suite's CPU time and this
# cut it by 29%. Inherited by every subprocess a test starts (subprocess_env copies os.environ).
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs the suite with the compiler settings users get.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# JAXLM_TEST_CACHE_DIR: another (say, empty) cache, to measure the suite as CI runs it.
CACHE_DIR = os.environ.get("JAXLM_TEST_CACHE_DIR") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache")

import jax  # noqa: E402  (after XLA_FLAGS on purpose)
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

from jaxlm.models import ModelConfig  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_model_cfg() -> ModelConfig:
  return ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=32)


def subprocess_env() -> dict:
  """Environment for CLI subprocesses: one CPU device unless a test says otherwise, shared cache."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = ""
  env["JAX_COMPILATION_CACHE_DIR"] = CACHE_DIR
  env["PYTHONPATH"] = REPO
  return env


if os.environ.get("JAXLM_TEST_CPU_LOG"):  # where the suite's CPU time goes (README: Tests)
  import json  # noqa: E402
  import resource  # noqa: E402
  import time  # noqa: E402

  @pytest.hookimpl(hookwrapper=True)
  def pytest_runtest_protocol(item, nextitem):
    """Appends each test's wall time and CPU time (this process's threads and the subprocesses
    it waited for) to the file JAXLM_TEST_CPU_LOG names: the cores a test takes from the others."""
    usage = lambda who: sum(resource.getrusage(who)[:2])  # noqa: E731  (user + system seconds)
    start = (time.monotonic(), usage(resource.RUSAGE_SELF), usage(resource.RUSAGE_CHILDREN))
    yield
    wall, own, children = (time.monotonic(), usage(resource.RUSAGE_SELF),
                           usage(resource.RUSAGE_CHILDREN))
    with open(os.environ["JAXLM_TEST_CPU_LOG"], "a") as f:
      f.write(json.dumps({"test": item.nodeid, "wall": wall - start[0], "cpu": own - start[1],
                          "children": children - start[2]}) + "\n")
