"""Turning records into token ids with the model's chat template."""

from __future__ import annotations

from uniapl.data.records import Record


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


def encode_target(tokenizer, prompt_ids: list[int], response: str, *, eos_id: int, think_prefix: str = "",
                  mask_think_prefix: bool = True, max_tokens: int = 0) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) for an SFT example; the completion ends with EOS.

    With Qwen3 chat templates in non-thinking mode the prompt already ends with the empty think block,
    so it is masked with the prompt. A response that itself starts with the think prefix has the prefix
    moved into the (masked) prompt when mask_think_prefix is set.
    """
    if think_prefix and response.startswith(think_prefix):
        prefix_ids = tokenizer(think_prefix, add_special_tokens=False)["input_ids"]
        response = response[len(think_prefix):]
        if mask_think_prefix:
            prompt_ids = prompt_ids + prefix_ids
        else:
            comp = prefix_ids + tokenizer(response, add_special_tokens=False)["input_ids"]
            return prompt_ids, (comp[: max_tokens - 1] if max_tokens else comp) + [eos_id]
    comp = tokenizer(response, add_special_tokens=False)["input_ids"]
    if max_tokens:
        comp = comp[: max_tokens - 1]
    return prompt_ids, comp + [eos_id]
