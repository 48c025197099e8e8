# Exports: deployable classifiers made from runs of the grid (`grids.<grid>.exports`; sweet/export.py), each in
# results/<grid>/classifiers/<name>/ (target `classifiers`; `all` makes them too).
#
# An export reads its run's trained model, which is a temp() output unless keep_checkpoints is true. Because the
# grid's exports are inputs of `all` and `classifiers`, the export job consumes the model in the same DAG as its
# training, so Snakemake deletes the model only once it has been exported: a grid that lists its exports before
# it runs exports them without keeping checkpoints and without retraining. An export asked for after its run's
# model was deleted would need the run trained again: that is refused, in one line, before anything runs.


rule export:
    """A deployable classifier: the run's model, temperatures, exit policy (measured on its logits) and card."""
    input:
        unpack(export_inputs),
    output:
        directory("results/{grid}/classifiers/{name}"),
    wildcard_constraints:
        grid=GRID_NAMES,
        name=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    params:
        run=export_run_dir,
        model=lambda wildcards: model_dir(export_run_wildcards(wildcards)),
        meta=lambda wildcards: meta_args(export_run_wildcards(wildcards)),
        policy=export_policy_args,
        # not passed to the command: a changed request re-exports
        request=lambda wildcards: export_request_json(export_entry(wildcards)),
    log:
        "results/logs/export/{grid}/{name}.log",
    localrule: True
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet export --run {params.run} --model {params.model} --logits {input.logits}"
        " --temperatures {input.temperatures} --task-dir {input.task_dir} {params.policy} --meta {params.meta}"
        " --name {wildcards.name} --grid {wildcards.grid} --out {output} > {log} 2>&1"


rule classifiers:
    """Target: the exported classifiers of the grid named (else config.yaml's grid), training what they need."""
    input:
        export_dirs(RUN_GRID),
