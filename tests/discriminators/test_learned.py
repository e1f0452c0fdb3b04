"""The online-trained teacher-vs-student discriminator."""

import random

import pytest
import torch

from uniapl.discriminators import DiscriminatorConfig, LearnedConfig, build_discriminator

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def batch(rng, n=8):
    prompts = [f"question {i}" for i in range(n)]
    teachers = ["Certainly! Here is a careful answer: " + " ".join(rng.choice(WORDS) for _ in range(25)) + ". In summary, done."
                for _ in range(n)]
    students = [" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(n)]
    return prompts, teachers, students


def test_learns_to_separate_and_logs_accuracy():
    disc = build_discriminator(DiscriminatorConfig(name="learned", transform="2p-1"))
    assert disc.trainable
    rng = random.Random(0)
    accs = []
    for _ in range(6):
        m = disc.update(*batch(rng))
        accs.append(m["disc/acc"])  # measured on the step's batch before training on it
        for key in ("disc/loss", "disc/acc_teacher", "disc/acc_student", "disc/acc_after_update", "disc/updates"):
            assert key in m
    assert accs[0] <= 0.75 and accs[-1] >= 0.95, accs
    p, t, s = batch(rng)
    coef, raw, _ = disc.coefficients(p + p, s + t, teachers=t + t, ground_truths=[None] * 16)
    assert raw[8:].min() > raw[:8].max()  # teacher-like answers score higher
    assert coef[8:].mean() > 0 > coef[:8].mean()


def test_state_dict_round_trip_and_update_ratio():
    cfg = DiscriminatorConfig(name="learned", learned=LearnedConfig(update_every=2, updates_per_step=3, minibatch_size=4))
    disc = build_discriminator(cfg)
    rng = random.Random(1)
    m1 = disc.update(*batch(rng))
    assert m1["disc/updated"] == 1.0 and m1["disc/updates"] == 3 * 4  # 3 passes x (16 rows / 4)
    assert disc.update(*batch(rng)) == {"disc/updated": 0.0}  # every 2nd policy step only
    state = disc.state_dict()
    other = build_discriminator(DiscriminatorConfig(name="learned", learned=LearnedConfig(seed=7)))
    p, t, s = batch(rng)
    assert not torch.allclose(other.scorer.score(p, t, s), disc.scorer.score(p, t, s))
    other.load_state_dict(state)
    assert torch.allclose(other.scorer.score(p, t, s), disc.scorer.score(p, t, s))
    assert other.scorer.policy_steps == 2


def test_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_discriminator(DiscriminatorConfig(name="learned"))
    assert torch.equal(torch.rand(3), expected)


def test_rows_without_teacher_skipped():
    disc = build_discriminator(DiscriminatorConfig(name="learned"))
    assert disc.update(["p"], [None], ["s"]) == {}


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_optimizers_and_prompt_features(optimizer):
    cfg = DiscriminatorConfig(name="learned", learned=LearnedConfig(optimizer=optimizer, use_prompt=True))
    disc = build_discriminator(cfg)
    m = disc.update(*batch(random.Random(2)))
    assert m["disc/updated"] == 1.0 and m["disc/loss"] > 0


def test_hf_classifier_backend(tiny_scorer_dirs):
    cfg = DiscriminatorConfig(name="learned", model_path=tiny_scorer_dirs["plain"], device="cpu",
                              learned=LearnedConfig(model="hf", lr=1e-3, max_tokens=64, updates_per_step=2))
    disc = build_discriminator(cfg)
    rng = random.Random(3)
    m = disc.update(*batch(rng, n=4))
    assert m["disc/updated"] == 1.0 and torch.isfinite(torch.tensor(m["disc/loss"]))
    p, t, s = batch(rng, n=4)
    assert disc.scorer.score(p, t, s).shape == (4,)
