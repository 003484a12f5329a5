"""notebooks/colab.ipynb runs top to bottom (tiny sizes, CPU), so it cannot go stale."""

import base64
import io
import os
import re

import pytest
from conftest import REPO, subprocess_env

from jaxlm.data.translation_tasks import catalogs

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = os.path.join(REPO, "notebooks", "colab.ipynb")


def test_colab_notebook_executes_in_tiny_mode(tmp_path):
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  env = {**subprocess_env(), "JAXLM_NOTEBOOK_TINY": "1"}
  client = nbclient.NotebookClient(notebook, timeout=240, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute(env=env)  # raises CellExecutionError, with the cell's traceback, if a cell fails

  runs = tmp_path / "runs" / "notebook"
  translated = bool(catalogs("de"))  # the translation task needs the German gettext catalogs
  for run in ("pretrain", "finetune", "bert", "bert_classify", "t5") + ("translate",) * translated:
    assert (runs / run / "checkpoints").is_dir() and (runs / run / "report.png").is_file(), run
  assert (runs / "bert_classify" / "predictions").is_dir()  # the classifier's predictions
  outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
  text = "".join(out.get("text", "") for out in outputs)
  assert text.count("exact match") == 2 + translated  # the GPT runs' and the T5's task metrics
  if translated:  # the T5 finetune's BLEU and chrF, and its beam-4 translation of a --source
    assert re.search(r"gettext_en_de at step 4: exact match \S+  BLEU \S+  chrF \S+", text)
    assert "'Open the file' -> beam 4: '" in text
  else:
    assert "translation finetune skipped: task gettext_en_de reads the gettext catalogs" in text
  assert text.count("validation loss") == 3  # evaluate: the two GPT runs, the BERT classifier
  assert "macro f1" in text and "gold \\ predicted" in text  # the classifier's metrics and table
  assert "name of ___: " in text  # the finetuned model's sample
  images = [base64.b64decode(out["data"]["image/png"]) for out in outputs
            if "image/png" in out.get("data", {})]
  assert len(images) == 2  # the two training reports are shown
  from PIL import Image
  assert Image.open(io.BytesIO(images[0])).size == (1000, 660)
