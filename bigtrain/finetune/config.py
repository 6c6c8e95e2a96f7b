"""Fine-tuning config: the pretraining job's sections plus ``sft`` (data and chat template)."""

from __future__ import annotations

from dataclasses import dataclass

from bigtrain.config.base import Config
from bigtrain.errors import BigtrainError

# Chat templates: how each message is rendered. ``{content}`` is the message text. Only assistant content,
# ``assistant_suffix`` and EOS carry loss; system and user turns and ``assistant_prefix`` are prompt.
TEMPLATES: dict[str, dict[str, str]] = {
    "plain": {"system_format": "{content}\n", "user_format": "{content}\n", "assistant_prefix": "",
              "assistant_suffix": ""},
    "chatml": {"system_format": "<|im_start|>system\n{content}<|im_end|>\n",
               "user_format": "<|im_start|>user\n{content}<|im_end|>\n",
               "assistant_prefix": "<|im_start|>assistant\n", "assistant_suffix": "<|im_end|>\n"},
    "llama2": {"system_format": "<<SYS>>\n{content}\n<</SYS>>\n\n", "user_format": "[INST] {content} [/INST]",
               "assistant_prefix": " ", "assistant_suffix": " "},
}

TOKENIZER_TEMPLATE = ("auto", "tokenizer")


@dataclass
class SFTConfig(Config):
    path: str = ""
    """Training examples: a .jsonl file, one object per line, either {"prompt", "response"} or
    {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}."""
    eval_path: str = ""
    """Held-out examples in the same format, evaluated every train.eval_interval steps (loss on response
    tokens only); empty: the last eval_fraction of `path`."""
    eval_fraction: float = 0.0
    """Share of `path` kept out of training for evaluation when eval_path is empty (0: none)."""
    template: str = "auto"
    """Chat template: tokenizer (the tokenizer's own Jinja chat template, as transformers renders it), plain,
    chatml, llama2 (the *_format / assistant_* keys below override parts of these three); auto: the
    tokenizer's when it has one, else plain."""
    system_format: str | None = None
    """Rendering of a system message ({content} is replaced)."""
    user_format: str | None = None
    """Rendering of a user message (also of `prompt`)."""
    assistant_prefix: str | None = None
    """Text before an assistant message (prompt side: no loss)."""
    assistant_suffix: str | None = None
    """Text after an assistant message (trained, like the message and the EOS after it)."""
    bos: bool = True
    """Start each example with BOS (not with the tokenizer's template, which places its own specials)."""
    eos: bool = True
    """End each assistant turn with EOS (trained), so generation learns to stop (not with the tokenizer's
    template, whose turns end with its own end-of-turn token)."""
    pack: bool = True
    """Pack several examples per sequence, with attention only within an example (segment ids); false pads
    each example to its own sequence."""
    truncate: bool = True
    """Cut examples longer than model.seq_len + 1 tokens (false: refuse them)."""

    def validate(self, prefix: str = "sft.") -> None:
        if self.template not in (*TEMPLATES, *TOKENIZER_TEMPLATE):
            raise BigtrainError(f"{prefix}template={self.template!r}: expected one of "
                                f"{', '.join((*TOKENIZER_TEMPLATE, *TEMPLATES))}")
        for name in ("system_format", "user_format"):
            v = getattr(self, name)
            if v is not None and "{content}" not in v:
                raise BigtrainError(f"{prefix}{name}={v!r} must contain {{content}}")
        if not 0 <= self.eval_fraction < 1:
            raise BigtrainError(f"{prefix}eval_fraction={self.eval_fraction} must be in [0, 1)")

    def uses_tokenizer_template(self, tok) -> bool:
        """True when examples are rendered with ``tok``'s own chat template."""
        if self.template == "tokenizer" and not tok.chat_template:
            raise BigtrainError(f"sft.template=tokenizer: tokenizer {tok.path} has no chat template "
                                f"(choose one of {', '.join(TEMPLATES)})")
        return self.template == "tokenizer" or (self.template == "auto" and bool(tok.chat_template))

    def formats(self) -> dict[str, str]:
        out = dict(TEMPLATES["plain" if self.template in TOKENIZER_TEMPLATE else self.template])
        for k in out:
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out
