# Two commands for a fresh machine (only Python >= 3.11 and the package index needed):
#   make run    pretrain on the built-in corpus, evaluate, sample, then finetune on the built-in
#               task and compare task metrics before and after, with examples and what to try next
#   make run-bert  the same for a BERT: masked-LM pretraining on the built-in corpus, then a
#               classification finetune on the built-in task, evaluated (accuracy, macro-F1)
#   make run-t5   the same for an encoder-decoder: span-corruption pretraining on the built-in
#               corpus, then a translation finetune on the built-in en->de task, evaluated (BLEU,
#               chrF, ROUGE-L, exact match), greedy and beam 4
#   make chat   finetune the pretrained run (make run's) as a chat model on the built-in task as
#               chats, then serve it on http://127.0.0.1:8000/v1 (Ctrl-C stops it)
#   make test   the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/default
FT_DIR ?= runs/finetune
TASK ?= pyfunc_params
BERT_DIR ?= runs/bert
BERT_FT_DIR ?= runs/bert_classify
CHAT_DIR ?= runs/chat
T5_DIR ?= runs/t5
T5_FT_DIR ?= runs/translate
TRANSLATE_TASK ?= gettext_en_de

.PHONY: run run-bert run-t5 chat test clean

# constraints.txt pins every package to the versions CI tests, so a fresh clone installs the same.
$(VENV)/installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e .
	touch $@

# torch only serves the Hugging Face parity tests: its CPU build is enough (constraints.txt's version
# has a local CPU wheel on CI's machine), and installing it first keeps pip from pulling the CUDA build.
$(VENV)/installed-test: $(VENV)/installed
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

run: $(VENV)/installed
	$(PY) -m jaxlm.train --config=configs/default.py --workdir=$(RUN_DIR)
	$(PY) -m jaxlm.evaluate --workdir=$(RUN_DIR)
	$(PY) -m jaxlm.sample --workdir=$(RUN_DIR) --prompt="def " --max_new_tokens=120 --num_samples=2
	$(PY) -m jaxlm.evaluate --workdir=$(RUN_DIR) --task=$(TASK)
	$(PY) -m jaxlm.train --config=configs/finetune.py --config.init_from=$(RUN_DIR) \
	    --config.data.path=$(TASK) --workdir=$(FT_DIR)
	$(PY) -m jaxlm.evaluate --workdir=$(FT_DIR) --task=$(TASK)
	$(PY) tools/before_after.py --task=$(TASK) --before=$(RUN_DIR) --after=$(FT_DIR)

run-bert: $(VENV)/installed
	$(PY) -m jaxlm.train --config=configs/bert_tiny.py --workdir=$(BERT_DIR)
	$(PY) -m jaxlm.evaluate --workdir=$(BERT_DIR)
	$(PY) -m jaxlm.train --config=configs/bert_classify.py --config.init_from=$(BERT_DIR) \
	    --workdir=$(BERT_FT_DIR)
	$(PY) -m jaxlm.evaluate --workdir=$(BERT_FT_DIR)

run-t5: $(VENV)/installed
	$(PY) -m jaxlm.train --config=configs/t5_tiny.py --workdir=$(T5_DIR)
	$(PY) -m jaxlm.evaluate --workdir=$(T5_DIR)
	$(PY) -m jaxlm.train --config=configs/translate.py --config.init_from=$(T5_DIR) \
	    --config.data.path=$(TRANSLATE_TASK) --workdir=$(T5_FT_DIR)
	$(PY) -m jaxlm.evaluate --workdir=$(T5_FT_DIR) --task=$(TRANSLATE_TASK)
	$(PY) -m jaxlm.evaluate --workdir=$(T5_FT_DIR) --task=$(TRANSLATE_TASK) --beam_size=4

chat: $(VENV)/installed
	test -d $(RUN_DIR)/checkpoints || $(PY) -m jaxlm.train --config=configs/default.py --workdir=$(RUN_DIR)
	$(PY) -m jaxlm.train --config=configs/finetune_chat.py --config.init_from=$(RUN_DIR) \
	    --workdir=$(CHAT_DIR)
	$(PY) -m jaxlm.serve --workdir=$(CHAT_DIR)

test: $(VENV)/installed-test
	$(PY) -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) .jax_cache runs
