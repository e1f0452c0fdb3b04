"""Turning records into token ids with the model's chat template."""

from __future__ import annotations

import re

from uniapl.data.records import Record

_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


def strip_think(text: str) -> str:
    """`text` without its <think>...</think> blocks (and the whitespace after each).

    What a verifier or a discriminator should see of an answer: Qwen3-style responses (and the paper's SFT
    targets, which prepend the empty block) carry them, and POLAR's examples strip them before scoring.
    """
    return _THINK_BLOCK.sub("", text) if "<think>" in text else text


def prompt_text(tokenizer, record: Record, enable_thinking: bool = False) -> str:
    """The chat-templated prompt, ending where the assistant's answer starts."""
    if tokenizer.chat_template is None:
        return record.prompt_text()
    return tokenizer.apply_chat_template(
        record.messages(), tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
    )


def encode_prompt(tokenizer, record: Record, *, enable_thinking: bool = False, max_tokens: int = 0) -> list[int]:
    ids = tokenizer(prompt_text(tokenizer, record, enable_thinking), add_special_tokens=False)["input_ids"]
    if max_tokens and len(ids) > max_tokens:
        ids = ids[-max_tokens:]  # keep the end: the instructions and the assistant header
    return ids


def _ends_with(tokenizer, ids: list[int], text: str, n_tokens: int) -> bool:
    # compared as text: the block's token ids may differ with the context they are tokenized in
    return bool(ids) and tokenizer.decode(ids[-(n_tokens + 2):]).endswith(text)


def encode_target(tokenizer, prompt_ids: list[int], response: str, *, eos_id: int, think_prefix: str = "",
                  mask_think_prefix: bool = True, max_tokens: int = 0) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) for a target answer (SFT, A-SFT, DPO/KTO rows).

    The answer carries at most ONE think block, and it is masked whenever the prompt has one:
      * Qwen3 templates in non-thinking mode end the prompt with the empty block `think_prefix`; a response
        that itself starts with it (the paper prepends it to every SFT answer) has it dropped, not doubled;
      * otherwise a response starting with it has it moved into the (masked) prompt when
        `mask_think_prefix`, or kept as the completion's first tokens (trained on) when not.
    The completion ends with EOS, unless it was cut at `max_tokens` (`data.max_response_tokens`): a
    truncated answer ends without EOS, so the model is not taught to stop mid-answer.
    """
    comp: list[int] = []
    if think_prefix and response.startswith(think_prefix):
        prefix_ids = tokenizer(think_prefix, add_special_tokens=False)["input_ids"]
        response = response[len(think_prefix):]
        if _ends_with(tokenizer, prompt_ids, think_prefix, len(prefix_ids)):
            pass  # the template already emitted the block (in the masked prompt)
        elif mask_think_prefix:
            prompt_ids = prompt_ids + prefix_ids
        else:
            comp = prefix_ids
    comp = comp + tokenizer(response, add_special_tokens=False)["input_ids"] + [eos_id]
    if max_tokens and len(comp) > max_tokens:
        comp = comp[:max_tokens]  # cut: no EOS
    return prompt_ids, comp
