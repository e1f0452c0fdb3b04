"""The lexical scorer and the AdversarialDiscriminator wrapper (reference modes, dedup, errors)."""

import pytest
import torch

from uniapl.discriminators import (
    SCORERS,
    AdversarialDiscriminator,
    DiscriminatorConfig,
    LexicalScorer,
    build_discriminator,
    register_discriminator,
)

REF = "The capital of France is Paris, a city on the Seine known for the Eiffel Tower."
PARA = "Paris is the capital city of France; it lies on the Seine and is famous for the Eiffel Tower."
UNREL = "Photosynthesis converts light energy into chemical energy stored in glucose."


def test_lexical_orders_identical_paraphrase_unrelated():
    disc = build_discriminator(DiscriminatorConfig(name="lexical"))
    coef, raw, metrics = disc.coefficients(["Q?"] * 3, [REF, PARA, UNREL], teachers=[REF] * 3, ground_truths=[None] * 3)
    assert coef.dtype == torch.float32 and raw.shape == (3,)
    assert coef[0] > coef[1] > coef[2]
    assert raw[0].item() == pytest.approx(-0.5)  # identical: r = -offset
    assert raw.max() <= -0.5 and raw.min() >= -4.5  # documented scale
    assert coef.min() >= -1 and coef.max() <= 1
    for key in ("adv/raw_mean", "adv/coef_mean", "adv/coef_std", "adv/coef_frac_positive"):
        assert key in metrics


def test_lexical_scale_and_offset_configurable():
    s = LexicalScorer(DiscriminatorConfig(similarity_scale=10.0, similarity_offset=0.6))
    r = s.score(["q", "q"], [REF, REF], [REF, ""])
    assert r.tolist() == pytest.approx([-0.6, -10.6])


def test_lexical_empty_texts():
    s = LexicalScorer()
    assert s.score(["", ""], ["", ""], ["", "x"]).tolist() == pytest.approx([-0.5, -4.5])


def test_chat_message_prompts_accepted():
    disc = build_discriminator()
    prompt = [{"role": "user", "content": "Q?"}]
    coef, raw, _ = disc.coefficients([prompt], [REF], teachers=[REF], ground_truths=[None])
    assert raw.item() == pytest.approx(-0.5)


def test_missing_reference_is_a_clear_error():
    disc = build_discriminator()
    with pytest.raises(ValueError, match=r"teacher.*rows \[1\]"):
        disc.coefficients(["a", "b"], ["x", "y"], teachers=["x", None], ground_truths=[None, None])
    gt = build_discriminator(DiscriminatorConfig(reference="ground_truth"))
    with pytest.raises(ValueError, match=r"ground-truth.*rows \[0\]"):
        gt.coefficients(["a"], ["x"], teachers=["t"], ground_truths=[None])
    with pytest.raises(ValueError, match="rows"):
        gt.coefficients(["a"], ["x"], teachers=[None], ground_truths=["g"])


def test_ground_truth_mode_is_difference_of_scores():
    scorer = LexicalScorer()
    disc = build_discriminator(DiscriminatorConfig(reference="ground_truth"))
    coef, raw, metrics = disc.coefficients(["q", "q"], [PARA, UNREL], teachers=[PARA, PARA], ground_truths=[REF, REF])
    r_s = scorer.score(["q", "q"], [REF, REF], [PARA, UNREL])
    r_t = scorer.score(["q", "q"], [REF, REF], [PARA, PARA])
    assert torch.allclose(raw, r_s - r_t)
    assert raw[0].item() == 0.0 and coef[0].item() == 1.0  # student as close to GT as the teacher
    assert coef[1] < 0
    assert "adv/raw_student_mean" in metrics and "adv/raw_teacher_mean" in metrics


class CountingScorer:
    def __init__(self, cfg):
        self.calls = []

    def score(self, prompts, references, candidates):
        self.calls.append(len(candidates))
        return torch.tensor([-float(len(c)) for c in candidates])


def test_registry_dedup_and_batching():
    register_discriminator("_counting_test")(CountingScorer)
    try:
        disc = build_discriminator(DiscriminatorConfig(name="_counting_test", batch_size=2))
        cands = ["a", "bb", "a", "ccc", "bb", "a"]
        coef, raw, _ = disc.coefficients(["p"] * 6, cands, teachers=["t"] * 6, ground_truths=[None] * 6)
        assert raw.tolist() == [-1, -2, -1, -3, -2, -1]
        assert disc.scorer.calls == [2, 1]  # 3 unique triples in chunks of 2
        assert disc.update(["p"], ["t"], ["a"]) == {} and disc.state_dict() == {}
        assert not disc.trainable
        with pytest.raises(ValueError, match="frozen"):
            disc.load_state_dict({"x": 1})
    finally:
        SCORERS.pop("_counting_test")


def test_non_finite_scores_rejected():
    class Bad:
        def score(self, p, r, c):
            return torch.tensor([float("nan")] * len(c))

    disc = AdversarialDiscriminator(Bad())
    with pytest.raises(ValueError, match="non-finite"):
        disc.coefficients(["p"], ["c"], teachers=["t"], ground_truths=[None])


def test_unknown_names_fail_clearly():
    with pytest.raises(KeyError, match="registered"):
        build_discriminator(DiscriminatorConfig(name="nope"))
    with pytest.raises(KeyError, match="known"):
        build_discriminator(DiscriminatorConfig(transform="nope"))
    with pytest.raises(ValueError, match="teacher"):
        AdversarialDiscriminator(LexicalScorer(), reference="gt")


def test_config_from_dict():
    """The discriminator section goes through the one config loader (uniapl.infra.schema)."""
    from uniapl.infra.schema import from_dict

    def config_from_dict(section):
        return from_dict(DiscriminatorConfig, section, prefix="discriminator")

    cfg = config_from_dict({"name": "polar_server", "server": {"url": "http://x:1", "backend": "vllm"}, "batch_size": 8})
    assert cfg.server.url == "http://x:1" and cfg.server.backend == "vllm" and cfg.batch_size == 8
    with pytest.raises(ValueError, match="unknown"):
        config_from_dict({"nmae": "lexical"})
    with pytest.raises(ValueError, match="unknown"):
        config_from_dict({"server": {"ulr": "x"}})


def test_empty_batch():
    coef, raw, metrics = build_discriminator().coefficients([], [], teachers=[], ground_truths=[])
    assert coef.shape == (0,) and raw.shape == (0,)
