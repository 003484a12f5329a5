"""`python -m jaxlm.serve` start-up mistakes: one line, exit status 2 (docs/errors.md)."""

import socket

import pytest
from test_cli import jaxlm
from test_errors import user_error


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return tmp_path_factory.mktemp("serve_errors")


def test_serving_a_workdir_without_a_checkpoint(root):
  result = jaxlm("serve", f"--workdir={root / 'none'}", "--port=0")
  user_error(result, root, "serve without a checkpoint", "no checkpoint in")


@pytest.mark.parametrize("flag", ["--port=70000", "--slots=0"])
def test_bad_serving_flags(root, flag):
  result = jaxlm("serve", f"--workdir={root / 'none'}", flag)
  user_error(result, root, f"serve {flag}", flag)


def test_a_port_in_use(root):
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    result = jaxlm("serve", f"--workdir={root / 'none'}", f"--port={port}")
  user_error(result, root, "serve on a port in use", f"127.0.0.1:{port}", volatile=str(port))
