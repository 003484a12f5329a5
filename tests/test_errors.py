"""The bad-input catalogue: each case ends with one line `error: <what is wrong>; <how to fix it>` on
stderr and exit status 2, without a traceback (unless --verbose), leaves nothing half-written and
leaves existing checkpoints untouched.

docs/errors.md lists the same cases; every message asserted here must appear there (with the test's
directory written as DIR). To regenerate it, run this file with JAXLM_ERRORS_DOC=FILE: the messages
are then appended to FILE as JSON lines instead of being looked up in the doc.
"""

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env
from test_cli import TINY, jaxlm
from test_train import write_corpus

from jaxlm.errors import UserError

DOC = os.path.join(REPO, "docs", "errors.md")


def jaxlm_on(devices: int, verb: str, *args: str) -> subprocess.CompletedProcess:
  """`jaxlm(...)` with `devices` simulated CPU devices."""
  env = subprocess_env()
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return subprocess.run([sys.executable, "-m", f"jaxlm.{verb}", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def tree_hash(path) -> dict[str, str]:
  """Every file under `path` (relative name -> sha256), and every directory (-> "dir")."""
  found = {}
  for directory, dirs, files in os.walk(path):
    for name in dirs:
      found[os.path.relpath(os.path.join(directory, name), path)] = "dir"
    for name in files:
      with open(os.path.join(directory, name), "rb") as f:
        found[os.path.relpath(os.path.join(directory, name), path)] = hashlib.sha256(
            f.read()).hexdigest()
  return found


def documented(case: str, message: str, volatile: str | None = None) -> None:
  """docs/errors.md shows `message` (a part matching `volatile` may differ, e.g. byte offsets)."""
  if os.environ.get("JAXLM_ERRORS_DOC"):
    with open(os.environ["JAXLM_ERRORS_DOC"], "a") as f:
      f.write(json.dumps({"case": case, "message": message}) + "\n")
    return
  pieces = re.split(volatile, message) if volatile else [message]
  with open(DOC) as f:
    doc = f.read()
  assert re.search(".+?".join(re.escape(p) for p in pieces), doc), (
      f"docs/errors.md lacks the message of {case}: {message}")


def user_error(result: subprocess.CompletedProcess, root, case: str, *fragments: str,
               logs: bool = False, volatile: str | None = None, workdir=None) -> str:
  """Asserts the contract above on a finished command; returns its error line.

  In the doc the test's directory is DIR, and `workdir`, if given, DIR/run."""
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert [line for line in lines if line.startswith("error: ")] == lines[-1:], result.stderr[-3000:]
  if not logs:  # failed before the run logged anything
    assert len(lines) == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
  line = lines[-1]
  assert "; " in line, line  # what is wrong; how to fix it
  for fragment in fragments:
    assert fragment in line, line
  shown = line.replace(str(workdir), "DIR/run") if workdir else line
  documented(case, shown.replace(str(root), "DIR"), volatile)
  return line


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return tmp_path_factory.mktemp("errors")


@pytest.fixture(scope="module")
def tiny(root) -> str:
  """The tiny config of test_cli.py on a small corpus; returns the config file."""
  config = root / "tiny.py"
  config.write_text(TINY.format(path=write_corpus(root / "corpus")))
  return str(config)


@pytest.fixture(scope="module")
def pretrained(root, tiny):
  """A finished tiny run with checkpoints 3 and 6: (workdir, its tree hash)."""
  workdir = root / "run"
  result = jaxlm("train", f"--config={tiny}", f"--workdir={workdir}", "--config.eval.sample_tokens=0")
  assert result.returncode == 0, result.stderr[-2000:]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  return str(workdir), tree_hash(workdir)


def cases(*rows: tuple) -> list:
  """Parameter rows whose first item, the case name, is also the test id."""
  return [pytest.param(*row, id=row[0]) for row in rows]


def write_data(root, case: str) -> str:
  """A data file for a data case, under DIR/data/."""
  os.makedirs(root / "data", exist_ok=True)
  files = {
      "missing_data": ("missing.txt", None),
      "empty_corpus": ("blank.txt", b"   \n\n\t\n"),
      "binary_file": ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00"),
      "invalid_utf8": ("latin1.txt", "caf\u00e9 au lait\n".encode("latin-1")),
      "malformed_jsonl": ("bad.jsonl", b'{"text": "one"}\n{"text": "two"\n{"text": "three"}\n'),
      "jsonl_missing_field": ("nofield.jsonl", b'{"text": "one"}\n{"body": "two"}\n'),
  }
  name, content = files[case]
  path = root / "data" / name
  if content is not None:
    path.write_bytes(content)
  return str(path)


@pytest.mark.parametrize("case, extra, expected", cases(
    ("missing_data", [], "data.path 'DIR/data/missing.txt' does not exist"),
    ("empty_corpus", [], "the corpus is empty after cleaning"),
    ("binary_file", [], "image.txt is a binary file, not text (NUL byte at offset 8)"),
    ("invalid_utf8", [], "latin1.txt is not valid UTF-8 (bad byte at offset 3)"),
    ("malformed_jsonl", [], "bad.jsonl:2: malformed JSON"),
    ("jsonl_missing_field", [], "nofield.jsonl:2: record has no string field 'text'"),
    ("sentencepiece_vocab_too_large",
     ["--config.data.tokenizer=sentencepiece", "--config.data.vocab_size=5000"],
     "data.vocab_size=5000 is larger than this corpus supports"),
))
def test_bad_data(root, tiny, case, extra, expected):
  path = ([f"--config.data.path={write_data(root, case)}"]
          if case != "sentencepiece_vocab_too_large" else [])
  workdir = root / case
  result = jaxlm("train", f"--config={tiny}", f"--workdir={workdir}", *path, *extra)
  line = user_error(result, root, case)
  assert expected in line.replace(str(root), "DIR")
  assert not workdir.exists()  # the workdir this run created is gone again


@pytest.mark.parametrize("case, args, expected", cases(
    ("unknown_config_key", ["--config.train.lrr=1"],
     "--config.train.lrr is not an option (did you mean train.lr?)"),
    ("override_of_wrong_type", ["--config.train.lr=abc"],
     "flag --config.train.lr=abc: could not convert string to float: 'abc'"),
    ("config_file_missing", ["--config=DIR/nowhere.py"], "No such file or directory"),
    ("config_file_syntax_error", ["--config=DIR/broken.py"],
     "SyntaxError: invalid syntax (broken.py, line 1)"),
    ("lora_without_init_from", ["--config.train.lora.rank=4"],
     "train.lora.rank > 0 needs config.init_from"),
))
def test_bad_flags_and_config_files(root, tiny, case, args, expected):
  (root / "broken.py").write_text("def get_config(:\n  return None\n")
  workdir = root / case
  result = jaxlm("train", f"--config={tiny}", f"--workdir={workdir}",
                 *[arg.replace("DIR", str(root)) for arg in args])
  assert expected in user_error(result, root, case)
  assert not workdir.exists()


@pytest.mark.parametrize("case, devices, args, expected", cases(
    ("seq_len_over_max_len", 1, ["--config.data.seq_len=64"],
     "data.seq_len=64 is longer than model.max_len=32"),
    ("batch_not_divisible", 4, ["--config.train.batch_size=6"],
     "train.batch_size=6 (micro-batch 6) is not divisible by the 4 data-parallel devices"),
    ("mesh_not_matching_devices", 4, ["--config.mesh.data=2"],
     "mesh data=2 fsdp=1 tensor=1 uses 2 devices but there are 4"),
))
def test_shapes_that_do_not_fit(root, tiny, case, devices, args, expected):
  workdir = root / case
  result = jaxlm_on(devices, "train", f"--config={tiny}", f"--workdir={workdir}", *args)
  assert expected in user_error(result, root, case)
  assert not workdir.exists()


FINETUNE = ["--config=configs/finetune.py", "--config.data.source=files",
            "--config.data.seq_len=32", "--config.train.steps=2", "--config.train.batch_size=8",
            "--config.eval.batch_size=8"]


@pytest.mark.parametrize("case, init_from, args, expected", cases(
    ("init_from_missing", "DIR/nowhere", [], "config.init_from=DIR/nowhere does not exist"),
    ("init_from_not_a_checkpoint", "DIR/corpus", [],
     "config.init_from=DIR/corpus is not a jaxlm workdir or checkpoint"),
    ("init_from_missing_step", "DIR/run/checkpoints/7", [],
     "no checkpoint for step 7 in DIR/run/checkpoints; choose one of the steps there: [3, 6]"),
    ("init_from_other_architecture", "DIR/run", ["--config.model.num_layers=3"],
     "model.num_layers (pretrained 2, override 3)"),
    ("init_from_other_tokenizer", "DIR/run", ["--config.data.tokenizer=byte"],
     "data.tokenizer (pretrained 'char', override 'byte')"),
    ("lora_rank_negative", "DIR/run", ["--config.train.lora.rank=-1"],
     "train.lora.rank=-1 must be positive"),
    ("lora_targets_match_nothing", "DIR/run",
     ["--config.train.lora.rank=4", "--config.train.lora.targets=embedding"],
     "train.lora.targets='embedding' matches no projection of this model"),
))
def test_init_from_that_cannot_be_used(root, pretrained, case, init_from, args, expected):
  source, source_hash = pretrained
  workdir = root / case
  result = jaxlm("train", *FINETUNE, f"--config.data.path={root / 'corpus'}",
                 f"--config.init_from={init_from.replace('DIR', str(root))}",
                 f"--workdir={workdir}", *args)
  assert expected in user_error(result, root, case).replace(str(root), "DIR")
  assert not workdir.exists()
  assert tree_hash(source) == source_hash


def damage(workdir, how: str) -> None:
  """Damages checkpoint 6 of a copied run."""
  step = os.path.join(workdir, "checkpoints", "6")
  if how == "truncated_array_file":
    # Every data file: parameters and optimizer state alike (evaluate reads only the parameters).
    data = os.path.join(step, "state", "ocdbt.process_0", "d")
    for path in (os.path.join(data, f) for f in os.listdir(data)):
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
  elif how == "garbled_manifest":
    with open(os.path.join(step, "state", "manifest.ocdbt"), "wb") as f:
      f.write(b"\x00garbage\xff" * 3)
  elif how == "truncated_config":
    path = os.path.join(step, "config", "metadata")
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  elif how == "missing_state":
    shutil.rmtree(os.path.join(step, "state"))


DAMAGE_DETAIL = r"(?<=is damaged or incomplete \().*(?=\); delete)"  # the underlying error


@pytest.fixture
def damaged(root, pretrained, request):
  """A copy of the pretrained run whose checkpoint 6 is damaged as `request.param` says."""
  workdir = root / f"damaged_{request.param}"
  shutil.copytree(pretrained[0], workdir)
  damage(workdir, request.param)
  yield str(workdir), request.param
  shutil.rmtree(workdir)


@pytest.mark.parametrize("damaged", ["truncated_array_file"], indirect=True)
def test_damaged_checkpoint_in_evaluate_and_resume(root, tiny, damaged):
  workdir, how = damaged
  before = tree_hash(workdir)
  expected = (f"checkpoint {workdir}/checkpoints/6 is damaged or incomplete (",
              "); delete that directory to fall back to the previous checkpoint (step 3)")
  result = jaxlm("evaluate", f"--workdir={workdir}")
  user_error(result, root, f"damaged_checkpoint_evaluate_{how}", *expected, volatile=DAMAGE_DETAIL,
             workdir=workdir)
  result = jaxlm("train", f"--config={tiny}", f"--workdir={workdir}", "--config.train.steps=9")
  user_error(result, root, f"damaged_checkpoint_resume_{how}", *expected, logs=True,
             volatile=DAMAGE_DETAIL, workdir=workdir)
  assert tree_hash(workdir) == before
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))  # the advice works
  result = jaxlm("evaluate", f"--workdir={workdir}")
  assert result.returncode == 0 and json.loads(result.stdout.splitlines()[-1])["step"] == 3


@pytest.mark.parametrize("damaged", ["garbled_manifest"], indirect=True)
def test_damaged_checkpoint_in_sample(root, damaged):
  """Reads that the failure cut short call back into a closed event loop: no tracebacks either."""
  workdir, how = damaged
  before = tree_hash(workdir)
  result = jaxlm("sample", f"--workdir={workdir}", "--prompt=the", "--max_new_tokens=4")
  user_error(result, root, f"damaged_checkpoint_{how}",
             f"checkpoint {workdir}/checkpoints/6 is damaged or incomplete (",
             "); delete that directory to fall back to the previous checkpoint (step 3)",
             volatile=DAMAGE_DETAIL, workdir=workdir)
  assert tree_hash(workdir) == before


@pytest.mark.parametrize("damaged", ["truncated_config", "missing_state"], indirect=True)
def test_damaged_checkpoint_files_are_named_in_process(root, damaged):
  from jaxlm.inference import trained

  workdir, how = damaged
  before = tree_hash(workdir)
  with pytest.raises(UserError) as error:
    trained.load(workdir)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"checkpoint {workdir}/checkpoints/6 is damaged or incomplete (")
  assert message.endswith("); delete that directory to fall back to the previous checkpoint (step 3)")
  documented(f"damaged_checkpoint_{how}", "error: " + message.replace(workdir, "DIR/run"),
             DAMAGE_DETAIL)
  assert tree_hash(workdir) == before


def test_checkpoint_of_another_train_state_is_not_called_damaged(root, pretrained):
  """A state with other fields (written by another jaxlm version) is not called damaged."""
  import dataclasses

  from jaxlm.inference import trained
  from jaxlm.training import checkpoint

  workdir, before = pretrained
  run = trained.load(workdir, 3)
  fields = {f.name: getattr(run.engine.abstract_state, f.name)
            for f in dataclasses.fields(run.engine.abstract_state)}
  last = list(fields)[-1]
  del fields[last]  # as if this version had one field fewer
  with (checkpoint.manager(workdir, read_only=True) as mngr,
        pytest.raises(UserError) as error):
    checkpoint.restore(mngr, 6, fields)
  message = str(error.value)
  assert message == (f"checkpoint {workdir}/checkpoints/6 holds a train state with other fields "
                     f"than this version of jaxlm ({last}); use the jaxlm version that wrote it, "
                     "or a new --workdir")
  documented("other_train_state", "error: " + message.replace(str(root), "DIR"),
             r"(?<=\().*(?=\); use)")
  assert tree_hash(workdir) == before


def test_workdir_below_a_file(root, tiny):
  (root / "a_file").write_text("not a directory")
  result = jaxlm("train", f"--config={tiny}", f"--workdir={root / 'a_file' / 'run'}")
  user_error(result, root, "workdir_below_a_file",
             f"cannot create workdir {root}/a_file/run: {root}/a_file is a file, not a directory")
  assert (root / "a_file").read_text() == "not a directory"


def test_workdir_in_a_read_only_directory(root, tiny):
  locked = root / "locked"
  locked.mkdir()
  # Root ignores permission bits; an immutable directory stops even root.
  if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(locked)],
                                                      capture_output=True, check=False).returncode:
    pytest.skip("chattr +i is not available here")
  try:
    result = jaxlm("train", f"--config={tiny}", f"--workdir={locked}")
    user_error(result, root, "workdir_not_writable",
               f"workdir {locked} is not writable: Operation not permitted")
    assert os.listdir(locked) == []
  finally:
    subprocess.run(["chattr", "-i", str(locked)], check=True)


def test_sampling_prompt_longer_than_the_context(root, pretrained):
  workdir, before = pretrained
  result = jaxlm("sample", f"--workdir={workdir}", "--prompt=" + "the cat sat. " * 3,
                 "--max_new_tokens=4")
  user_error(result, root, "prompt_too_long",
             "prompt of 40 tokens + max_new_tokens=4 exceeds the model's context of 32 tokens")
  assert tree_hash(workdir) == before


@pytest.mark.parametrize("case, args, expected", cases(
    ("beam_size_below_1", ["--beam_size=0"], "--beam_size=0 is below 1"),
    ("beam_with_temperature", ["--beam_size=4", "--temperature=0.8"],
     "--temperature=0.8 samples, but beam search (--beam_size=4) does not"),
    ("more_samples_than_beams", ["--beam_size=2", "--num_samples=3"],
     "--num_samples=3 is more than the --beam_size=2 hypotheses"),
    ("beam_option_without_beam", ["--length_penalty=0.6"],
     "--length_penalty only applies to beam search"),
))
def test_bad_beam_search_flags(root, pretrained, case, args, expected):
  workdir, before = pretrained
  result = jaxlm("sample", f"--workdir={workdir}", "--prompt=the", *args)
  user_error(result, root, case, expected)
  assert tree_hash(workdir) == before


def test_verbose_adds_the_traceback(root, tiny):
  result = jaxlm("train", f"--config={tiny}", f"--workdir={root / 'verbose'}",
                 f"--config.data.path={root / 'nowhere.txt'}", "--verbose")
  assert result.returncode == 2
  assert "Traceback (most recent call last)" in result.stderr and "UserError" in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: data.path ")


ENOSPC_FROM_TENSORSTORE = (
    'RESOURCE_EXHAUSTED: Error writing "params.embedding/0.0" in OCDBT database at local file '
    '"/x/": Failed to write 3165 bytes to file 8: No space left on device [os_error_code=\'28\']')


@pytest.mark.parametrize("where", ["at_once", "in_the_background", "seen_by_the_next_save"])
def test_disk_full_during_a_save(root, tiny_model_cfg, monkeypatch, where):
  """The disk fills up while step 6 is written: a one-line UserError naming step 6 and the
  step to resume from, step 3 intact, and no half-written step 6 left."""
  import jax
  import orbax.checkpoint as ocp
  from orbax.checkpoint._src.serialization import serialization

  from jaxlm.config import base_config
  from jaxlm.parallel import sharding
  from jaxlm.training import checkpoint
  from jaxlm.training.engine import build_engine
  from jaxlm.training.optim import OptimConfig

  mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
  engine = build_engine(tiny_model_cfg, OptimConfig(), mesh, base_config().mesh.rules, seed=0,
                        seq_len=16)
  state = engine.init()
  workdir = root / f"disk_full_{where}"
  directory = checkpoint.checkpoint_dir(str(workdir))
  mngr = checkpoint.manager(str(workdir), keep=2)
  checkpoint.save(mngr, 3, state, {"step": 3}, {"kind": "byte"}, {"next_index": 3})
  mngr.wait_until_finished()
  before = tree_hash(os.path.join(directory, "3"))

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  async def full_tensorstore(*args, **kwargs):
    raise ValueError(ENOSPC_FROM_TENSORSTORE)

  if where == "at_once":
    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
  else:
    monkeypatch.setattr(serialization, "async_serialize_from_host", full_tensorstore)
  expected = (f"disk full while writing checkpoint 6 in {directory}: No space left on device; "
              "free space and rerun to resume from step 3")
  with pytest.raises(UserError) as error:
    checkpoint.save(mngr, 6, state, {"step": 6}, {"kind": "byte"}, {"next_index": 6})
    if where == "seen_by_the_next_save":
      checkpoint.save(mngr, 9, state, {"step": 9}, {"kind": "byte"}, {"next_index": 9})
    mngr.wait_until_finished()
  assert str(error.value) == expected
  mngr.close()  # reported once; the manager still closes
  documented("disk_full", "error: " + expected.replace(str(workdir), "DIR/run"))
  assert os.listdir(directory) == ["3"]  # nothing of step 6 (or 9) is left
  assert checkpoint.latest_steps(str(workdir)) == [3]
  assert tree_hash(os.path.join(directory, "3")) == before
  with checkpoint.manager(str(workdir), read_only=True) as mngr:
    restored, data_state = checkpoint.restore(mngr, 3, engine.abstract_state)
  assert data_state == {"next_index": 3}
  assert jax.tree.leaves(restored.params)[0].shape == jax.tree.leaves(state.params)[0].shape
