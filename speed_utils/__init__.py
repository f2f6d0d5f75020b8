"""speed-repro: a runnable, measured reproduction of SPEED (arXiv 2410.18634).

One module per concern (see ``shared/docs/design.md``): ``config`` (profiles), ``runs`` (run
folders, atomic writes, markers), ``assets`` (named models, offline assembly), ``teacher``
(OpenAI-compatible client, cache, ledger, llama.cpp server), ``prompts`` and ``schema`` (SPEED's
prompts and output checks), ``teacher_data`` (stages 01-02), ``environment`` (stage 00) and
``pipeline`` (stage registry, papermill runner, command line).
"""
import logging

__version__ = "0.1.0"

# bitsandbytes (the 4-bit QLoRA path), imported by peft, logs at import that it cannot fetch an optional CPU
# kernel from the Hub; nothing here uses that kernel (toolchain.md §c)
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
