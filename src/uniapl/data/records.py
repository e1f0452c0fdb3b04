"""The one record type every loader produces.

A record is one prompt with what any algorithm may need for it: the verification spec (IFEval-style
instruction ids + kwargs), an optional ground-truth answer, an optional teacher answer, and optional
preference data (a chosen/rejected pair for DPO, a labelled answer for KTO), and the row's own columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

Messages = list[dict[str, str]]
Prompt = Union[str, Messages]


@dataclass
class Record:
    prompt: Prompt
    instruction_id_list: list[str] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)
    ground_truth: str | None = None
    teacher: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    completion: str | None = None
    label: bool | None = None
    key: Any = None
    source: str = ""  # "file:line" or "dataset[row]" for error messages
    # the row's columns as the data had them, less the prompt column: what reward functions receive as
    # keyword arguments (TRL passes a dataset's columns that way), e.g. `answer` for a math check
    columns: dict[str, Any] = field(default_factory=dict, repr=False)

    def prompt_text(self) -> str:
        """The prompt as plain text: the string, or the user/system message contents joined with newlines."""
        if isinstance(self.prompt, str):
            return self.prompt
        return "\n".join(m["content"] for m in self.prompt if m.get("role") != "assistant")

    def messages(self) -> Messages:
        """The prompt as chat messages (a plain string becomes one user turn)."""
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return list(self.prompt)
