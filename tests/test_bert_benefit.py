"""tools/bert_benefit.py's statistics (tools/paired_tests.py) and bookkeeping, without training."""

import os
import sys

import pytest
from scipy.stats import binomtest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import bert_benefit  # noqa: E402
from paired_tests import mcnemar_exact, sign_flip_test  # noqa: E402


@pytest.mark.parametrize("a_only, b_only", [(0, 0), (3, 0), (7, 2), (12, 12), (2, 15)])
def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_examples(a_only, b_only):
  both, neither = 40, 9  # concordant examples change nothing
  a = [True] * a_only + [False] * b_only + [True] * both + [False] * neither
  b = [False] * a_only + [True] * b_only + [True] * both + [False] * neither
  result = mcnemar_exact(a, b)
  assert (result["a_only"], result["b_only"]) == (a_only, b_only)
  expected = binomtest(a_only, a_only + b_only).pvalue if a_only + b_only else 1.0
  assert result["p"] == pytest.approx(expected, rel=1e-12)


def test_sign_flip_test_of_one_run_each_approximates_mcnemar():
  differences = [1.0] * 14 + [-1.0] * 4 + [0.0] * 60
  exact = binomtest(14, 18).pvalue  # 0.0309
  assert sign_flip_test(differences, draws=200_000) == pytest.approx(exact, abs=0.003)
  assert sign_flip_test([0.0] * 10) == 1.0  # no difference at all
  assert sign_flip_test([0.5, -0.5, 0.25], draws=1000) == sign_flip_test([0.5, -0.5, 0.25],
                                                                         draws=1000)


def test_summary_and_paired_comparison_over_seeds_and_a_deterministic_baseline():
  gold = {"val": ["email", "json", "json", "ctypes"], "test": ["json", "email"]}
  gold["val+test"] = gold["val"] + gold["test"]
  seeds = bert_benefit.with_both([
      {"val": ["email", "json", "json", "json"], "test": ["json", "email"]},  # 5 of 6 right
      {"val": ["email", "json", "email", "ctypes"], "test": ["json", "json"]},  # 4 of 6
  ])
  baseline = bert_benefit.with_both([{"val": ["json"] * 4, "test": ["json"] * 2}])  # 3 of 6
  summary = bert_benefit.summarize(seeds, gold)
  assert summary["val+test"]["examples"] == 6
  assert summary["val+test"]["accuracy"]["values"] == pytest.approx([5 / 6, 4 / 6])
  assert summary["val+test"]["accuracy"]["mean"] == pytest.approx(0.75)
  assert summary["val+test"]["accuracy"]["std"] == pytest.approx(0.117851, abs=1e-6)
  tests = bert_benefit.compare(seeds, baseline, gold)["val+test"]
  # Only seed 0 is right on val[0] and test[1]; only seed 1 on val[0] and val[3], only the
  # baseline on val[2] against seed 1.
  assert [(m["a_only"], m["b_only"]) for m in tests["mcnemar"]] == [(2, 0), (2, 1)]
  assert tests["mcnemar"][1]["p"] == pytest.approx(binomtest(2, 3).pvalue)
  assert tests["difference"] == pytest.approx(0.75 - 0.5)


def test_finetune_options_keep_bert_classifys_proportions():
  default = bert_benefit.finetune_options(0.0, 0)
  assert "--config.train.steps=150" in default and "--config.train.lr=0.0003" in default
  assert "--config.train.warmup_steps=15" in default and "--config.eval.every=50" in default
  longer = bert_benefit.finetune_options(1e-3, 300)
  assert "--config.train.steps=300" in longer and "--config.train.lr=0.001" in longer
  assert "--config.train.warmup_steps=30" in longer and "--config.checkpoint.every=100" in longer


def _records(counts: dict[str, int]) -> list:
  from jaxlm.data.labelled import ClassificationRecord
  records = [ClassificationRecord(f"{label} docstring {i}", label)
             for label, n in counts.items() for i in range(n)]
  order = sorted(range(len(records)), key=lambda i: (i * 37) % len(records))
  return [records[i] for i in order]  # labels interleaved


@pytest.mark.parametrize("counts, n, expected", [
    # shares 4.5 / 3.5 / 2.0: floors 4 + 3 + 2, the last place to the tied shortfall first by name
    ({"a": 45, "b": 35, "c": 20}, 10, {"a": 5, "b": 3, "c": 2}),
    # shares 3.15 / 2.45 / 1.4: floors 3 + 2 + 1, the last place to b's 0.45
    ({"a": 45, "b": 35, "c": 20}, 7, {"a": 3, "b": 3, "c": 1}),
    # shares 10 / 6 / 3 / 0.8 / 0.2: d and e get their one each, the largest gives one back
    ({"a": 50, "b": 30, "c": 15, "d": 4, "e": 1}, 20, {"a": 9, "b": 6, "c": 3, "d": 1, "e": 1}),
])
def test_subsample_is_stratified_by_label(counts, n, expected):
  records = _records(counts)
  chosen = bert_benefit.subsample(records, n, seed=0)
  assert len(chosen) == n == len(set(chosen))
  got = {label: sum(r.label == label for r in chosen) for label in counts}
  assert got == expected
  positions = [records.index(r) for r in chosen]
  assert positions == sorted(positions)  # a subset, in the records' order
  assert bert_benefit.subsample(records, n, seed=0) == chosen  # one subsample per seed
  assert bert_benefit.subsample(records, len(records), seed=0) == records


def test_subsample_seed_draws_another_subsample_of_the_same_strata():
  records = _records({"a": 60, "b": 40})
  first, second = (bert_benefit.subsample(records, 10, seed) for seed in (0, 1))
  assert first != second
  assert sorted(r.label for r in first) == sorted(r.label for r in second) == ["a"] * 6 + ["b"] * 4
  with pytest.raises(SystemExit):
    bert_benefit.subsample(records, 1, seed=0)  # one example cannot hold both labels


def test_subsample_is_what_the_finetunes_read(tmp_path):
  from jaxlm.data.labelled import read_labelled
  records = _records({"email": 30, "json": 12})
  chosen = bert_benefit.subsample(records, 14, seed=0)
  options = dict(o.removeprefix("--config.").split("=", 1)
                 for o in bert_benefit.data_options(str(tmp_path), chosen))
  assert options["data.source"] == "files" and options["data.format"] == "classification"
  assert read_labelled(options["data.path"], "classification") == chosen
  assert options["data.val_path"] != options["data.path"]
  assert bert_benefit.data_options(str(tmp_path), None) == [
      "--config.data.source=task", "--config.data.path=docstring_package",
      "--config.data.format=classification"]  # all examples: the built-in task, as before


def test_finetune_batch_is_overridden_for_small_training_sets():
  assert "--config.train.batch_size=32" in bert_benefit.finetune_options(0.0, 0)
  assert "--config.train.batch_size=16" in bert_benefit.finetune_options(0.0, 0, 16)


def test_tfidf_val_is_the_grids_best_on_validation():
  """Against an exhaustive search written here with sklearn: the chosen settings have the best
  validation accuracy of the grid (ties to the larger C, then the shorter n-grams), and their test
  predictions are that model's."""
  from sklearn.feature_extraction.text import TfidfVectorizer
  from sklearn.linear_model import LogisticRegression

  from jaxlm.data.labelled import ClassificationRecord
  words = ["a", "b", "c", "(", ")", "=", "x"]
  rng = __import__("random").Random(0)

  def record(i):  # the label is whether "( )" occurs in order: bigrams help, trigrams may too
    text = " ".join(rng.choice(words) for _ in range(6))
    return ClassificationRecord(text, str("( )" in text))

  train, val, test = ([record(i) for i in range(n)] for n in (300, 80, 80))
  predicted, settings = bert_benefit.tfidf_val(train, {"val": val, "test": test}, r"\S+")
  results = {}
  for ngrams in ((1, 2), (1, 3)):
    for c in (0.1, 1.0, 10.0, 100.0):
      vec = TfidfVectorizer(ngram_range=ngrams, sublinear_tf=True, token_pattern=r"\S+")
      model = LogisticRegression(max_iter=3000, C=c).fit(
          vec.fit_transform([r.text for r in train]), [r.label for r in train])
      results[(ngrams, c)] = {s: list(model.predict(vec.transform([r.text for r in rs])))
                              for s, rs in (("val", val), ("test", test))}
  accuracy = {k: sum(p == r.label for p, r in zip(v["val"], val)) for k, v in results.items()}
  best = max(accuracy.values())
  expected = max((k for k in accuracy if accuracy[k] == best), key=lambda k: (k[1], -k[0][1]))
  assert settings == {"ngrams": list(expected[0]), "C": expected[1]}
  assert predicted["test"] == results[expected]["test"]


def test_data_options_name_the_task():
  assert bert_benefit.data_options("unused", None, "python_syntax")[1] == (
      "--config.data.path=python_syntax")
