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
