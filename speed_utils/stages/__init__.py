"""One module per stage, named as the stage is in :data:`speed_utils.registry.STAGES`.

Each has one entry point, ``run(ctx: StageContext) -> StageResult``: it does the stage's work through
the services of the package, writes the outputs the registry declares, and returns the metrics its
done marker records (plus what its notebook shows). The notebooks (``notebooks/NN_*.ipynb``) open the
context, call ``run``, show the result and call ``ctx.done``.

=====  ===========  ==========================  =============================================
stage  module       notebook                    paper
=====  ===========  ==========================  =============================================
00     environment  00_environment.ipynb        pre-flight, versions, models
01     brainstorm   01_brainstorm.ipynb         §3.2.1 task brainstorming (teacher)
02     seed         02_seed_data.ipynb          §3.2.2 seed data (teacher)
03     junior       03_junior_sft.ipynb         §3.2.2 junior generator, SFT
04     senior       04_senior_dpo.ipynb         §3.2.3 senior generator, judged samples and DPO
05     revisor      05_revisor_sft.ipynb        §3.2.4 revisor, SFT on the teacher's revisions
06     synthesis    06_synthesis.ipynb          §3.3 synthesis: senior writes, revisor revises
07     embedder     07_embedder.ipynb           §4.1 contrastive training of the embedder
08     evaluate     08_evaluate.ipynb           §4.2 MTEB-format evaluation
09     results      09_results.ipynb            Tables 1-2 beside ours
10     cost         10_cost.ipynb               §4.5, Table 5: teacher calls and dollars
11     scaling      11_scaling.ipynb            Table 2 ablation, Fig. 4 scaling, the claims
=====  ===========  ==========================  =============================================
"""
