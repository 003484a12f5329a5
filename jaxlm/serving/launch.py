"""Starting `python -m jaxlm.serve` in a subprocess and waiting until it serves (for tests and
tools/serve_bench.py): it listens on a free port (`--port=0`) and prints where."""

import re
import subprocess
import sys
import threading
import time

SERVING_LINE = re.compile(r"^serving .* on http://([^\s/]+):(\d+)/v1")


def launch(workdir: str, *args: str, env: dict | None = None, cwd: str | None = None,
           timeout: float = 300) -> tuple[subprocess.Popen, str, int, list[str]]:
  """(process, host, port, output lines so far and to come) of a server that is ready."""
  process = subprocess.Popen([sys.executable, "-m", "jaxlm.serve", f"--workdir={workdir}",
                              "--port=0", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  lines: list[str] = []
  found: list[re.Match] = []
  ready = threading.Event()

  def read():  # keeps draining the pipe, so the server never blocks on a full one
    for line in process.stdout:
      lines.append(line)
      match = SERVING_LINE.match(line)
      if match:
        found.append(match)
        ready.set()
    ready.set()

  threading.Thread(target=read, daemon=True).start()
  deadline = time.monotonic() + timeout
  while not ready.wait(0.5):
    if time.monotonic() > deadline:
      break
  if not found:
    process.kill()
    raise RuntimeError("the server did not start:\n" + "".join(lines[-50:]))
  return process, found[0][1], int(found[0][2]), lines
