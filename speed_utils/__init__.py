"""speed-repro: a runnable, measured reproduction of SPEED (arXiv 2410.18634).

``cli`` is the command line, ``runner`` runs the stage notebooks with papermill (and stage 11's
sweeps), ``registry`` holds the stages' contracts, ``StageContext`` and the done markers, and
``stages/`` one module per stage with its ``run(ctx)``. Beneath them, the services, one per concern:
``config``, ``runs``, ``assets``, ``teacher``, ``prompts``, ``schema``, ``generate``, ``train``,
``embed``, ``evaluate``, ``cost`` and the rest (``docs/architecture.md`` has the map).
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
