"""`uniapl ifeval run`: generate responses to IFEval-style prompts with a model, then score them.

The model is a hub id, a local folder, or a local ``.gguf`` file (transformers de-quantizes it; needs
the ``gguf`` package). The chat template is applied; decoding is greedy unless a temperature is given;
prompts are batched (sorted by length, left-padded) with a progress bar. Responses are written after
every batch, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from .scoring import Prompts, _hashable

log = logging.getLogger(__name__)

__all__ = ["load_model", "generate_responses", "generate_texts"]


def load_model(model: str, *, gguf_file: str | None = None, dtype: str = "auto", device: str = "cpu"):
    """(model, tokenizer) from a hub id, a local folder, or a ``.gguf`` file path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = model
    path = Path(model)
    if gguf_file is None and path.suffix == ".gguf" and path.is_file():
        src, gguf_file = str(path.parent), path.name
    kw: dict[str, Any] = {}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    tok = AutoTokenizer.from_pretrained(src, **kw)
    torch_dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if gguf_file and torch_dtype == "auto":
        torch_dtype = torch.float32  # de-quantized GGUF weights; fp32 on CPU
    mdl = AutoModelForCausalLM.from_pretrained(src, dtype=torch_dtype, **kw)
    mdl.to(device).eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return mdl, tok


def _eos_ids(model, tok) -> list[int]:
    ids = set()
    for v in (getattr(model.generation_config, "eos_token_id", None), tok.eos_token_id):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return sorted(ids)


def _prompt_ids(tok, prompt: str, max_prompt_tokens: int) -> list[int]:
    if tok.chat_template is not None:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    else:
        text = prompt
    ids = tok(text, add_special_tokens=tok.chat_template is None)["input_ids"]
    return ids[-max_prompt_tokens:] if max_prompt_tokens and len(ids) > max_prompt_tokens else ids


_ENGINE_FAILED: list[bool] = []


def generate_texts(model, tok, batch: list[list[int]], *, max_new_tokens: int, temperature: float, seed: int,
                   eos: list[int], top_p: float = 1.0, num_samples: int = 1, engine=None) -> list[tuple[str, int]]:
    """(text, completion tokens) for each of `num_samples` samples of each prompt (a prompt's samples contiguous).

    Uses `engine` when given (e.g. the vLLM engine), else the project's KV-cache rollout engine; falls back to
    ``model.generate`` if that engine is unusable.
    """
    import torch

    rows = None
    if engine is not None:
        from uniapl.rollout import SamplingParams

        out = engine.generate(batch, SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                                    top_p=top_p, num_samples=num_samples, seed=seed))
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(out.completion_ids, out.completion_mask)]
    elif not _ENGINE_FAILED:
        try:  # the project's KV-cache sampler, when present and compatible
            from uniapl.rollout import SamplingParams, build_engine

            engine = build_engine("hf", model=model, eos_token_ids=eos, pad_token_id=tok.pad_token_id)
            out = engine.generate(batch, SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                                        top_p=top_p, num_samples=num_samples, seed=seed))
            rows = [ids[mask.bool()].tolist() for ids, mask in zip(out.completion_ids, out.completion_mask)]
        except Exception as e:  # an API change there must not stop an evaluation: use HF generate
            log.warning("uniapl.rollout engine unusable (%s: %s); using model.generate", type(e).__name__, e)
            _ENGINE_FAILED.append(True)
    if rows is None:
        width = max(len(b) for b in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, b in enumerate(batch):
            ids[i, width - len(b):] = torch.tensor(b)
            mask[i, width - len(b):] = 1
        device = next(model.parameters()).device
        gen_kw = {"do_sample": temperature > 0, "num_return_sequences": num_samples}
        if temperature > 0:
            torch.manual_seed(seed)
            gen_kw.update(temperature=temperature, top_p=top_p)
        with torch.inference_mode():
            seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                                  pad_token_id=tok.pad_token_id, eos_token_id=eos, **gen_kw)
        rows = []
        for s in seqs:
            r = s[width:].tolist()
            end = next((i for i, t in enumerate(r) if t in eos), None)  # up to and including the first EOS
            rows.append(r if end is None else r[: end + 1])
    return [(tok.decode([t for t in r if t not in eos], skip_special_tokens=True), len(r)) for r in rows]


def _generate_batch(model, tok, batch: list[list[int]], *, max_new_tokens: int, temperature: float, seed: int,
                    eos: list[int]) -> list[str]:
    return [text for text, _ in generate_texts(model, tok, batch, max_new_tokens=max_new_tokens, temperature=temperature,
                                               seed=seed, eos=eos)]


def generate_responses(
    model,
    tok,
    prompts: Prompts,
    out_path: Path,
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    temperature: float = 0.0,
    seed: int = 0,
    limit: int | None = None,
    max_prompt_tokens: int = 2048,
    progress: bool = True,
) -> list[dict]:
    """Responses (``key``, ``prompt``, ``response``) to each prompt, in the prompts' order.

    Rows already in `out_path` (same key and prompt) are kept, so a run resumes after an interruption.
    """
    from tqdm.auto import tqdm

    rows = [row for _, row in prompts.rows][: limit if limit else None]
    done: dict[Any, dict] = {}
    if out_path.exists():
        for line in out_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                done[(_hashable(r.get("key")), r.get("prompt"))] = r
    todo = [r for r in rows if (_hashable(r.get("key")), r["prompt"]) not in done]
    if done:
        log.info("resuming: %d of %d responses already in %s", len(rows) - len(todo), len(rows), out_path)
    encoded = [(r, _prompt_ids(tok, r["prompt"], max_prompt_tokens)) for r in todo]
    # similar lengths together (less padding), within windows so that an interrupted run has done a prefix
    window = max(batch_size * 8, 1)
    encoded = [x for w in range(0, len(encoded), window) for x in sorted(encoded[w : w + window], key=lambda x: -len(x[1]))]
    eos = _eos_ids(model, tok)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc="generating", unit="prompt", disable=not progress)
    t0 = time.time()
    with out_path.open("a", encoding="utf-8") as f:
        for s in range(0, len(encoded), batch_size):
            chunk = encoded[s : s + batch_size]
            texts = _generate_batch(model, tok, [ids for _, ids in chunk], max_new_tokens=max_new_tokens,
                                    temperature=temperature, seed=seed + s, eos=eos)
            for (r, _), text in zip(chunk, texts):
                rec = {"key": r.get("key"), "prompt": r["prompt"], "response": text}
                done[(_hashable(r.get("key")), r["prompt"])] = rec
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            bar.update(len(chunk))
    bar.close()
    log.info("generated %d responses in %.1f s", len(todo), time.time() - t0)
    ordered = [done[(_hashable(r.get("key")), r["prompt"])] for r in rows]
    with out_path.open("w", encoding="utf-8") as f:  # rewrite in prompt order
        for rec in ordered:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return ordered
