"""`uniapl convert gguf FILE.gguf --output DIR`: a GGUF causal LM as a Hugging Face model folder.

transformers reads a GGUF file (`from_pretrained(..., gguf_file=...)`) by dequantizing every tensor, but
vLLM and most tools want a folder of config + safetensors + tokenizer. This writes that folder:
  * config.json / generation_config.json from the GGUF metadata (transformers' mapping);
  * model.safetensors holding the DEQUANTIZED weights in `dtype` (a Q4 file becomes float32 by default;
    the values are the quantized ones, exactly, not the weights the GGUF was made from);
  * the tokenizer (tokenizer.json + tokenizer_config.json with the chat template, when the file has one).

It refuses an existing non-empty DIR and writes into a temporary sibling folder renamed to DIR at the end,
so an interrupted conversion leaves no half-written model behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from uniapl.infra.schema import ConfigError

GGUF_MAGIC = b"GGUF"
DTYPES = ("float32", "bfloat16", "float16")


def convert_gguf(gguf_file: str | Path, output: str | Path, *, dtype: str = "float32") -> Path:
    """Write the GGUF causal LM `gguf_file` as a Hugging Face folder `output`; returns `output`.

    Raises ConfigError (a user's mistake: missing/not-GGUF input, non-empty output, unknown dtype)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, out = Path(gguf_file), Path(output)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    if not src.is_file():
        raise ConfigError(f"{src}: no such GGUF file")
    with open(src, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ConfigError(f"{src}: not a GGUF file (it does not start with the bytes 'GGUF')")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--output {out}: exists and is not an empty folder; choose another path or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        folder, name = str(src.parent.resolve()), src.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
        # the weights are plain tensors now; forget where they came from so that the folder loads as an
        # ordinary (unquantized) checkpoint
        for attr in ("hf_quantizer", "quantization_method"):
            if hasattr(model, attr):
                setattr(model, attr, None)
        model.is_quantized = False
        model.config.__dict__.pop("quantization_config", None)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private; the folder is an ordinary output
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def add_subparser(sub) -> None:
    c = sub.add_parser("convert", help="convert a model file into a Hugging Face model folder")
    kinds = c.add_subparsers(dest="kind", required=True)
    g = kinds.add_parser("gguf", help="a GGUF causal LM -> config + dequantized safetensors + tokenizer: "
                                      "uniapl convert gguf FILE.gguf --output DIR")
    g.add_argument("gguf_file", help="the .gguf file")
    g.add_argument("--output", "-o", required=True, help="the folder to create (must not exist or be empty)")
    g.add_argument("--dtype", default="float32", help=f"dtype of the written weights: {', '.join(DTYPES)}")
    g.set_defaults(func=_run_gguf)


def _run_gguf(args) -> int:
    out = convert_gguf(args.gguf_file, args.output, dtype=args.dtype)
    print(out)
    return 0
