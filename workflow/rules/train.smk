# Training: one job per run of a joint method (EE, SWEET, …: sweet.methods); for a per-exit method (MM) one job
# per member (so members train in parallel on a cluster; the slurm profile submits them as job arrays) plus a
# `combine` step. Each run gets its own seeded training subset and calibration split first.
#
# Training jobs are never grouped with the steps after them: a failed calibration or evaluation (or curves)
# must not delete a finished training, which Snakemake does to every job of a failed group. Cheap steps (split,
# combine) run on the submit host (Snakefile: localrules). Training commands `exec` python so that Slurm's
# SIGTERM (warning before the time limit, scancel, pre-emption) reaches the training process directly: it
# checkpoints at its next logging step and exits, and the retry resumes (sweet/resume.py: CheckpointOnSignal).


rule split:
    """The run's seeded training subset of `budget` examples, and its identity (run.json), before it trains."""
    input:
        task_dir,
    output:
        splits=f"{RUN}/{layout.SPLITS}",
        record=f"{RUN}/{layout.RUN_JSON}",
    params:
        record=run_record,
    log:
        log_pattern("split"),
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet split --task-dir {input} --budget {wildcards.budget} --seed {wildcards.seed}"
        " --out {output.splits} --run-record {params.record:q} --run-record-out {output.record} > {log} 2>&1"


rule calibration_split:
    """The run's calibration split: unused training examples (cal-pool<N>), or the evaluation split (cal-eval).
    Not a training input: a new calibration recalibrates and re-evaluates the trained model."""
    input:
        task_dir,
    output:
        f"{CAL}/{layout.CALIBRATION_SPLIT}",
    params:
        calibration=calibration_args,
    log:
        log_pattern("calibration_split", calibrated=True),
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet split --task-dir {input} --budget {wildcards.budget} --seed {wildcards.seed}"
        " {params.calibration} --calibration-out {output} > {log} 2>&1"


# A run's method options (sweet.methods) reach `sweet train` in its run record (run.json's identity, what the run
# id digests), not as --method-options: a changed shell command would make Snakemake retrain every finished run.
rule train:
    """Fine-tune an early-exit model with a joint method of sweet.methods (EE: exits share the backbone's
    gradients; SWEET: each block learns only from its own exit; …). A killed or signalled job resumes from its
    checkpoints when rerun."""
    input:
        task_dir=task_dir,
        splits=f"{RUN}/{layout.SPLITS}",
        record=f"{RUN}/{layout.RUN_JSON}",
        backbone=backbone_input,
    output:
        model=maybe_temp(directory(f"{RUN}/{layout.MODEL}")),
        metrics=f"{RUN}/{layout.TRAIN_METRICS}",
        conflict=f"{RUN}/{layout.GRADIENT_CONFLICT}",
    wildcard_constraints:
        method=JOINT_PATTERN,
    params:
        backbone=backbone_arg,
        hub_cache=Untracked(HUB_CACHE),
        revision=revision_arg,
        exits=exit_layers_arg,
        pooling=pooling_arg,
        spec=train_spec,
        meta=meta_args,
        work_dir=checkpoint_dir,
        offline=OFFLINE,
    log:
        log_pattern("train"),
    benchmark:
        benchmark_pattern("train")
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
        " --backbone {params.backbone:q} {params.revision} --hub-cache {params.hub_cache:q} --exit-layers {params.exits}"
        " {params.pooling} --method {wildcards.method} --seed {wildcards.seed} --train-spec {params.spec:q}"
        " --out {output.model} --metrics {output.metrics} --gradient-conflict-out {output.conflict}"
        " --meta {params.meta} --run-record {input.record} --work-dir {params.work_dir:q} > {log} 2>&1"


rule train_member:
    """A per-exit method (Multi-Model): member k is an independent model truncated after exit k's layer,
    fine-tuned on its own."""
    input:
        task_dir=task_dir,
        splits=f"{RUN}/{layout.SPLITS}",
        record=f"{RUN}/{layout.RUN_JSON}",
        backbone=backbone_input,
    output:
        model=maybe_temp(directory(f"{RUN}/{layout.MEMBER_MODEL}")),
        metrics=f"{RUN}/{layout.MEMBER_METRICS}",
    wildcard_constraints:
        method=PER_EXIT_PATTERN,
    params:
        backbone=backbone_arg,
        hub_cache=Untracked(HUB_CACHE),
        revision=revision_arg,
        exits=exit_layers_arg,
        pooling=pooling_arg,
        spec=train_spec,
        work_dir=checkpoint_dir,
        offline=OFFLINE,
    log:
        log_pattern("train_member", member=True),
    benchmark:
        benchmark_pattern("train_member", member=True)
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
        " --backbone {params.backbone:q} {params.revision} --hub-cache {params.hub_cache:q} --exit-layers {params.exits}"
        " {params.pooling} --method {wildcards.method} --member {wildcards.k} --seed {wildcards.seed}"
        " --train-spec {params.spec:q}"
        " --out {output.model} --metrics {output.metrics} --run-record {input.record} --work-dir {params.work_dir:q}"
        " > {log} 2>&1"


rule combine:
    """Multi-Model: declare the trained members one model (exit k = member k)."""
    input:
        member_dirs,
    output:
        maybe_temp(f"{RUN}/{layout.SWEET_CONFIG}"),
    wildcard_constraints:
        method=PER_EXIT_PATTERN,
    log:
        log_pattern("combine"),
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet combine --members {input} --method {wildcards.method} --out {output} > {log} 2>&1"


rule calibrate:
    """Per-exit temperature scaling on the run's calibration split (grouped with `evaluate`: one job per run)."""
    input:
        model=model_inputs,
        task_dir=task_dir,
        calibration=f"{CAL}/{layout.CALIBRATION_SPLIT}",
    output:
        temperatures=f"{CAL}/{layout.TEMPERATURES}",
        # the calibration split's per-exit logits (logits.npz's format): held-out operating points and
        # risk-controlled thresholds are chosen on these, never on the evaluation set
        logits=f"{CAL}/{layout.CALIBRATION_LOGITS}",
    params:
        model=model_dir,
        batch=EVAL_BATCH,
        offline=OFFLINE,
    log:
        log_pattern("calibrate", calibrated=True),
    benchmark:
        benchmark_pattern("calibrate", calibrated=True)
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
        " --splits {input.calibration} --batch-size {params.batch} --out {output.temperatures}"
        " --logits-out {output.logits} > {log} 2>&1"
