"""Chat templates and chat finetuning data: rendering, the assistant-only loss mask, the built-in
chat task, and a chat run whose checkpoint carries its template."""

import json

import numpy as np
import pytest
from test_cli import TINY, jaxlm
from test_train import write_corpus

from jaxlm.data import chat
from jaxlm.data.chat_records import ChatRecord, load_chat_task, pack_chat_split
from jaxlm.data.simple_tokenizers import ByteTokenizer
from jaxlm.data.tasks import load_task
from jaxlm.errors import UserError
from jaxlm.training import checkpoint

BYTES = ByteTokenizer()
CHAT = [{"role": "system", "content": "terse"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"}, {"role": "user", "content": "ok?"},
        {"role": "assistant", "content": "k"}]


def test_the_default_template_renders_role_lines_and_closes_replies_with_eos():
  ids, targets = chat.encode_chat(BYTES, chat.DEFAULT_TEMPLATE, CHAT)
  eos = BYTES.eos_id
  enc = BYTES.encode
  expected = [eos, *enc("system: terse\nuser: hi\nassistant: "), *enc("yo"), eos,
              *enc("user: ok?\nassistant: "), *enc("k"), eos]
  assert ids == expected
  assert [i for i, t in zip(ids, targets) if t] == [*enc("yo"), eos, *enc("k"), eos]
  prompt = chat.encode_prompt(BYTES, chat.DEFAULT_TEMPLATE, CHAT[:2])
  assert prompt == [eos, *enc("system: terse\nuser: hi\nassistant: ")]


def test_packed_chats_weigh_exactly_the_assistant_tokens():
  records = [ChatRecord(tuple(CHAT)), ChatRecord(tuple(CHAT[1:3]))]
  packed, bytes_per_token = pack_chat_split(records, BYTES, chat.DEFAULT_TEMPLATE, 64, "left", "t")
  row = packed.rows(np.arange(len(packed)))
  predicted = row["targets"][row["weights"] > 0].tolist()
  eos, enc = BYTES.eos_id, BYTES.encode
  assert predicted == [*enc("yo"), eos, *enc("k"), eos, *enc("yo"), eos]
  assert bytes_per_token == pytest.approx(5 / 8)  # "yo", "k", "yo" over 8 scored tokens


def test_templates_are_sandboxed_and_must_append_turns():
  with pytest.raises(UserError, match="failed to render"):
    chat.render("{{ ''.__class__.__mro__[1].__subclasses__() }}", CHAT, False)
  reorders = ("{% if add_generation_prompt %}assistant: {% endif %}"
              "{% for m in messages %}{{ m['content'] }}{% endfor %}")
  with pytest.raises(UserError, match="only append"):
    chat.encode_chat(BYTES, reorders, CHAT)


def test_the_chat_task_asks_the_prompt_and_replies_the_completion():
  plain, chats = load_task("pyfunc_params", "val"), load_chat_task("pyfunc_params_chat", "val")
  assert len(plain) == len(chats) > 0
  assert chats[0].messages == ({"role": "user", "content": plain[0].prompt},
                               {"role": "assistant", "content": plain[0].completion})


def test_a_chat_jsonl_run_saves_its_template_with_the_tokenizer(tmp_path):
  corpus = write_corpus(tmp_path / "corpus")
  config = tmp_path / "tiny.py"
  config.write_text(TINY.format(path=corpus))
  data = tmp_path / "chat.jsonl"
  with open(data, "w") as f:
    for i in range(40):
      f.write(json.dumps({"messages": [{"role": "user", "content": f"the cat {i}"},
                                       {"role": "assistant", "content": "sat."}]}) + "\n")
  template = ("{% for m in messages %}{{ m['role'][0] }}> {{ m['content'] }}"
              "{% if m['role'] == 'assistant' %}{{ eos_token }}{% else %} {% endif %}{% endfor %}"
              "{% if add_generation_prompt %}a> {% endif %}")
  workdir = tmp_path / "run"
  result = jaxlm("train", f"--config={config}", f"--workdir={workdir}",
                 "--config.data.tokenizer=byte", f"--config.data.path={data}",
                 f"--config.data.chat_template={template}", "--config.train.steps=3",
                 "--config.checkpoint.every=3")
  assert result.returncode == 0, result.stderr[-2000:]
  assert " val chat " in result.stderr + result.stdout
  _, _, tokenizer_json = checkpoint.restore_metadata(str(workdir))
  assert tokenizer_json["chat_template"] == template
