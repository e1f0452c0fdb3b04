"""The adversarial discriminator D(x, y_teacher, y_student) in [-1, 1] (paper section 3.2, appendix A.3).

    from uniapl.discriminators import DiscriminatorConfig, build_discriminator
    disc = build_discriminator(DiscriminatorConfig(name="lexical"))
    coef, raw, metrics = disc.coefficients(prompts, students, teachers=teachers, ground_truths=gts)

Built-in scorers (``DiscriminatorConfig.name``):
    lexical       word-F1 + char-3-gram overlap; no model, no download          (lexical.py)
    embedding     sentence-embedding cosine (sentence-transformers, local path)   (embedding.py)
    polar         POLAR reward model loaded locally with transformers            (polar.py)
    polar_server  POLAR served by lmdeploy / vLLM (/pooling) or sglang (/classify) (polar_server.py)
    learned       small classifier trained online on teacher vs student answers  (learned.py)
Add your own with ``@register_discriminator("name")``; add a transform with ``@register_transform``.
"""

# built-in scorers register themselves on import; none of these imports loads a model or transformers
from . import embedding, learned, lexical, polar, polar_server  # noqa: F401
from .adversarial import AdversarialDiscriminator, build_discriminator
from .config import DiscriminatorConfig, LearnedConfig, PolarConfig, ServerConfig
from .embedding import EmbeddingScorer
from .learned import LearnedScorer
from .lexical import LexicalScorer
from .polar import PolarScorer, format_input
from .polar_server import PolarHTTPClient, PolarServerError, PolarServerScorer
from .registry import SCORERS, Scorer, build_scorer, register_discriminator
from .transforms import TRANSFORMS, adversarial_coefficient, get_transform, register_transform

__all__ = [
    "AdversarialDiscriminator",
    "DiscriminatorConfig",
    "EmbeddingScorer",
    "LearnedConfig",
    "LearnedScorer",
    "LexicalScorer",
    "PolarConfig",
    "PolarHTTPClient",
    "PolarScorer",
    "PolarServerError",
    "PolarServerScorer",
    "SCORERS",
    "Scorer",
    "ServerConfig",
    "TRANSFORMS",
    "adversarial_coefficient",
    "build_discriminator",
    "build_scorer",
    "format_input",
    "get_transform",
    "register_discriminator",
    "register_transform",
]
