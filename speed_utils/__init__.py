"""speed-repro: a runnable, measured reproduction of SPEED (arXiv 2410.18634).

One module per concern (see ``shared/docs/design.md``): ``config`` (profiles), ``runs`` (run
folders, atomic writes, markers), ``assets`` (named models, offline assembly), ``teacher``
(OpenAI-compatible client, cache, ledger, llama.cpp server), ``prompts`` and ``schema`` (SPEED's
prompts and output checks), ``teacher_data`` (stages 01-02), ``environment`` (stage 00) and
``pipeline`` (stage registry, papermill runner, command line).
"""
import logging
import warnings

__version__ = "0.1.0"

# bitsandbytes (the 4-bit QLoRA path), imported by peft, logs at import that it cannot fetch an optional CPU
# kernel from the Hub; nothing here uses that kernel (toolchain.md §c)
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


class _Drop(logging.Filter):
    """Drop one library message that misleads here (and nothing else from its logger)."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


# A stage kernel has no ipywidgets: tqdm's text bars are what the quiet terminal shows. bf16 on the CPU is
# chosen only where it has bf16 matrix units (speed_utils.precision), so sentence-transformers' advice
# against it does not apply.
warnings.filterwarnings("ignore", message="IProgress not found")
logging.getLogger("sentence_transformers.base.model").addFilter(_Drop("This model was loaded in"))
