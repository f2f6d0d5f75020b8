"""speed-repro: a runnable, measured reproduction of SPEED (arXiv 2410.18634).

One module per concern (see ``shared/docs/design.md``): ``config`` (profiles), ``runs`` (run
folders, atomic writes, markers), ``assets`` (named models, offline assembly), ``teacher``
(OpenAI-compatible client, cache, ledger, llama.cpp server), ``prompts`` and ``schema`` (SPEED's
prompts and output checks), ``teacher_data`` (stages 01-02), ``environment`` (stage 00) and
``pipeline`` (stage registry, papermill runner, command line).
"""
__version__ = "0.1.0"
