"""Planning: everything Snakemake imports while it plans, apart from the jobs it plans.

Modules here read the configuration, name and locate runs, estimate what they need, and read where they stand;
they never import torch or transformers, nor any module of the job side (training, evaluation, export's builder),
so `snakemake -n` stays fast (tests/test_plan_boundary.py fails when one does). Besides the standard library,
PyYAML and jsonschema, they import only the shared registries (sweet.methods, sweet.backbones' table,
sweet.exits' rule names) and sweet.errors.

- ``settings``: the output root, the training defaults (``TrainSpec``), a resolved model, how settings merge
- ``config``: loading and validating the configuration
- ``estimates``: what a grid needs offline (task sizes, parameter counts, disk)
- ``layout``: the one owner of run folders: run ids, every path inside a run, logs, the legacy layout, data
- ``status``: where each run stands (finished, failed, never started)
- ``cluster``: what each job asks a cluster for
- ``migrate``: moving runs of the layout before run ids
- ``hub``: the Hugging Face cache, read offline
"""
