# Training: one job per EE/SWEET run; for MM one job per member (so members train in parallel on a cluster; the
# slurm profile submits them as job arrays) plus a `combine` step. Each run gets its own seeded training subset
# and calibration split first.
#
# Training jobs are never grouped with the steps after them: a failed calibration or evaluation (or curves)
# must not delete a finished training, which Snakemake does to every job of a failed group. Cheap steps (split,
# combine) run on the submit host (Snakefile: localrules). Training commands `exec` python so that Slurm's
# SIGTERM (warning before the time limit, scancel, pre-emption) reaches the training process directly: it
# checkpoints at its next logging step and exits, and the retry resumes (sweet/train.py: CheckpointOnSignal).


rule split:
    """Seeded training subset of `budget` examples and the calibration split, per run."""
    input:
        task_dir,
    output:
        "results/runs/{task}/{model}/b{budget}/{method}/s{seed}/splits.json",
    params:
        calibration=config.get("calibration_size", 1000),
        calibrate_on=config.get("calibrate_on", "pool"),
    log:
        "results/logs/split/{task}/{model}/b{budget}/{method}/s{seed}.log",
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet split --task-dir {input} --budget {wildcards.budget} --seed {wildcards.seed}"
        " --calibration-size {params.calibration} --calibrate-on {params.calibrate_on} --out {output} > {log} 2>&1"


rule train:
    """Fine-tune an early-exit model (EE: exits share the backbone's gradients; SWEET: each block learns only
    from its own exit). A killed or signalled job resumes from its checkpoints when rerun."""
    input:
        task_dir=task_dir,
        splits="results/runs/{task}/{model}/b{budget}/{method}/s{seed}/splits.json",
        backbone=backbone_input,
    output:
        model=maybe_temp(directory("results/runs/{task}/{model}/b{budget}/{method}/s{seed}/model")),
        metrics="results/runs/{task}/{model}/b{budget}/{method}/s{seed}/train_metrics.json",
        conflict="results/runs/{task}/{model}/b{budget}/{method}/s{seed}/gradient_conflict.csv",
    wildcard_constraints:
        method="ee|sweet",
    params:
        backbone=backbone_arg,
        hub_cache=Location(HUB_CACHE),
        exits=exit_layers_arg,
        pooling=pooling_arg,
        spec=train_spec,
        meta=meta_args,
        work_dir=checkpoint_dir,
        offline=OFFLINE,
    log:
        "results/logs/train/{task}/{model}/b{budget}/{method}/s{seed}.log",
    benchmark:
        "results/benchmarks/train/{task}/{model}/b{budget}/{method}/s{seed}.tsv"
    retries: TRAIN_RETRIES
    resources:
        mem_mb=train_mem_mb,
        runtime=train_runtime,
        slurm_extra=TRAIN_SLURM_EXTRA,
        **GPU_RESOURCES,
    conda:
        "../../envs/sweet.yaml"
    threads: THREADS
    shell:
        "exec {params.offline} python -m sweet train --task-dir {input.task_dir} --splits {input.splits}"
        " --backbone {params.backbone:q} --hub-cache {params.hub_cache:q} --exit-layers {params.exits}"
        " {params.pooling} --method {wildcards.method} --seed {wildcards.seed} --train-spec {params.spec:q}"
        " --out {output.model} --metrics {output.metrics} --gradient-conflict-out {output.conflict}"
        " --meta {params.meta} --work-dir {params.work_dir:q} > {log} 2>&1"


rule train_member:
    """Multi-Model: member k is an independent model truncated after exit k's layer, fine-tuned on its own."""
    input:
        task_dir=task_dir,
        splits="results/runs/{task}/{model}/b{budget}/{method}/s{seed}/splits.json",
        backbone=backbone_input,
    output:
        model=maybe_temp(directory("results/runs/{task}/{model}/b{budget}/{method}/s{seed}/model/member_{k}")),
        metrics="results/runs/{task}/{model}/b{budget}/{method}/s{seed}/members/member_{k}.json",
    wildcard_constraints:
        method="mm",
    params:
        backbone=backbone_arg,
        hub_cache=Location(HUB_CACHE),
        exits=exit_layers_arg,
        pooling=pooling_arg,
        spec=train_spec,
        work_dir=checkpoint_dir,
        offline=OFFLINE,
    log:
        "results/logs/train_member/{task}/{model}/b{budget}/{method}/s{seed}/member_{k}.log",
    benchmark:
        "results/benchmarks/train_member/{task}/{model}/b{budget}/{method}/s{seed}/member_{k}.tsv"
    retries: TRAIN_RETRIES
    resources:
        mem_mb=train_mem_mb,
        runtime=train_runtime,
        slurm_extra=TRAIN_SLURM_EXTRA,
        **GPU_RESOURCES,
    conda:
        "../../envs/sweet.yaml"
    threads: THREADS
    shell:
        "exec {params.offline} python -m sweet train --task-dir {input.task_dir} --splits {input.splits}"
        " --backbone {params.backbone:q} --hub-cache {params.hub_cache:q} --exit-layers {params.exits}"
        " {params.pooling} --method mm --member {wildcards.k} --seed {wildcards.seed} --train-spec {params.spec:q}"
        " --out {output.model} --metrics {output.metrics} --work-dir {params.work_dir:q} > {log} 2>&1"


rule combine:
    """Multi-Model: declare the trained members one model (exit k = member k)."""
    input:
        member_dirs,
    output:
        maybe_temp("results/runs/{task}/{model}/b{budget}/{method}/s{seed}/model/sweet_config.json"),
    wildcard_constraints:
        method="mm",
    log:
        "results/logs/combine/{task}/{model}/b{budget}/{method}/s{seed}.log",
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet combine --members {input} --out {output} > {log} 2>&1"


rule calibrate:
    """Per-exit temperature scaling on the run's calibration split (grouped with `evaluate`: one job per run)."""
    input:
        model=model_inputs,
        task_dir=task_dir,
        splits="results/runs/{task}/{model}/b{budget}/{method}/s{seed}/splits.json",
    output:
        temperatures="results/runs/{task}/{model}/b{budget}/{method}/s{seed}/temperatures.json",
        # the calibration split's per-exit logits (logits.npz's format): held-out operating points and
        # risk-controlled thresholds are chosen on these, never on the evaluation set
        logits="results/runs/{task}/{model}/b{budget}/{method}/s{seed}/calibration_logits.npz",
    params:
        model=model_dir,
        batch=EVAL_BATCH,
        offline=OFFLINE,
    log:
        "results/logs/calibrate/{task}/{model}/b{budget}/{method}/s{seed}.log",
    benchmark:
        "results/benchmarks/calibrate/{task}/{model}/b{budget}/{method}/s{seed}.tsv"
    group:
        "evaluate"
    resources:
        mem_mb=forward_mem_mb,
        runtime=calibrate_runtime,
        **GPU_RESOURCES,
    conda:
        "../../envs/sweet.yaml"
    threads: THREADS
    shell:
        "{params.offline} python -m sweet calibrate --model {params.model} --task-dir {input.task_dir}"
        " --splits {input.splits} --batch-size {params.batch} --out {output.temperatures}"
        " --logits-out {output.logits} > {log} 2>&1"
