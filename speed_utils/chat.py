"""One chat template for every engine: training (trl), transformers, llama.cpp and vLLM.

SPEED's generators are LLaMA-3-8B *base* models (§4.1), whose tokenizer has no chat template, yet
junior SFT (Eq. 1), senior DPO (Eq. 2) and revisor SFT (Eq. 3) train on user/assistant turns and the
engines must render prompts exactly as training did. :func:`load_tokenizer` gives a tokenizer without
a template :data:`DEFAULT_TEMPLATE`; a training writes the template it used into its adapter folder
(:func:`record`), and every generator that loads that adapter renders with the recorded one.
Tokenizers that ship a template (Qwen2.5, SmolLM2) keep theirs.
"""
from __future__ import annotations

from pathlib import Path

from .files import atomic_write_text

TEMPLATE_FILE = "chat_template.jinja"  # inside an adapter folder

# The tokenizer's BOS (LLaMA-3 base was pre-trained with <|begin_of_text|> first; the engines tokenize
# the rendered text without adding special tokens, so it appears once), then ChatML's turn markers
# written as plain text (a base model's vocabulary has no special tokens for them, and LLaMA-3 base's
# reserved header tokens have untrained embeddings), each turn closed by the tokenizer's own
# end-of-sequence token, so that every engine stops where an assistant turn ends.
DEFAULT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def load_tokenizer(model_id: str, adapter: str | Path | None = None, **kwargs):
    """The base's tokenizer with a pad token, rendering chats with the adapter's recorded template,
    else the base's own, else :data:`DEFAULT_TEMPLATE`."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_id, **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    recorded = Path(adapter) / TEMPLATE_FILE if adapter else None
    if recorded is not None and recorded.is_file():
        tok.chat_template = recorded.read_text()
    elif not tok.chat_template:
        tok.chat_template = DEFAULT_TEMPLATE
    return tok


def record(tok, adapter_dir: Path) -> None:
    """Write the template a training rendered its rows with into its adapter folder."""
    atomic_write_text(Path(adapter_dir) / TEMPLATE_FILE, tok.chat_template)


def user_turn(tok, prompt: str) -> str:
    """A single user turn and the start of the assistant's, as text (the engines' prompt)."""
    return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


__all__ = ["DEFAULT_TEMPLATE", "TEMPLATE_FILE", "load_tokenizer", "record", "user_turn"]
