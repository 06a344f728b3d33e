"""The MQAR study's tiny configuration trains all three models on the CPU build: losses fall and held-out
accuracy is well above chance (values are drawn from 32 tokens: chance is 1/32)."""

import torch

from bench.mqar import make_mqar, run, tiny_config


def test_mqar_generator_asks_about_listed_pairs():
    tokens, labels = make_mqar(5, 32, 4, 64, torch.Generator().manual_seed(0))
    for t, y in zip(tokens, labels):
        pairs = dict(zip(t[0:8:2].tolist(), t[1:8:2].tolist()))
        asked = (y != -100).nonzero().flatten()
        assert len(asked) == 4 and all(pairs[int(t[i])] == int(y[i]) for i in asked)


def test_mqar_tiny_study_learns():
    cfg, settings = tiny_config()
    for r in run(cfg, settings, "cpu"):
        assert r["final_loss"] < r["first_loss"] - 1.0, r
        assert r["accuracy"] > 3 / 32, r
