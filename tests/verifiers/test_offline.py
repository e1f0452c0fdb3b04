"""No download, no NLTK data directory: Punkt comes from an installed package; langdetect is seeded."""

import json
import os
import subprocess
import sys


def test_sentence_splitting_needs_no_nltk_data(monkeypatch):
    import nltk

    from uniapl.verifiers import text

    def no_download(*a, **k):
        raise AssertionError("nltk.download called")

    monkeypatch.setattr(nltk, "download", no_download)
    monkeypatch.setattr(nltk.data, "path", [])
    text.sentence_tokenizer.cache_clear()
    text.clear_caches()
    try:
        assert text.split_sentences("Dr. Smith went to Washington. He arrived at 5 p.m. on Monday.") == (
            "Dr. Smith went to Washington.", "He arrived at 5 p.m. on Monday.")
        assert text.word_tokenize("I'm HERE. Are you?") == ("I", "'m", "HERE", ".", "Are", "you", "?")
    finally:
        text.sentence_tokenizer.cache_clear()
        text.clear_caches()


def test_punkt_parameters_match_the_nltk_english_model():
    from punkt.data import english

    from uniapl.verifiers.text import sentence_tokenizer

    params = sentence_tokenizer()._params
    assert params.abbrev_types == set(english.ABBREV_TYPES) and "dr" in params.abbrev_types
    assert len(english.ORTHO_CONTEXT) > 1000
    assert dict(params.ortho_context) == dict(english.ORTHO_CONTEXT)


def test_tokenizing_unseen_words_stores_nothing():
    """NLTK's defaultdict(int) stored a 0 for every unseen word it looked up: a long run grew it without bound."""
    from uniapl.verifiers.text import sentence_tokenizer

    tok = sentence_tokenizer()
    before = dict(tok._params.ortho_context)
    words = " ".join(f"Zqxw{i}vb ends here. Qqv{i}zz starts" for i in range(200))
    assert len(tok.tokenize(words)) == 201
    assert tok._params.ortho_context["zqxw0vb"] == 0  # still read as 0
    assert dict(tok._params.ortho_context) == before


_PROBE = """
import json, sys
from uniapl.verifiers.text import detect_language
texts = json.loads(sys.argv[1])
print(json.dumps([detect_language(t) for t in texts]))
"""


def test_language_detection_is_the_same_across_processes():
    texts = ["Ciao", "Hola amigo, que tal", "This is fine, gracias", "ok ok ok ja", "Das ist gut, very good"]
    outs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(texts)], env=env, capture_output=True,
                             text=True, check=True, timeout=120)
        outs.add(out.stdout.strip())
    assert len(outs) == 1
