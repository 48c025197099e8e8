# Training: one job per EE/SWEET run; for MM one job per member (so members train in parallel on a cluster)
# plus a `combine` step. Each run gets its own seeded training subset and calibration split first.
#
# Jobs in group "run" (split, EE/SWEET training, combine, calibrate, evaluate, curves) of one run are chained,
# so a cluster executor submits them as one job per run (MM: one for the split, one per member, one for the rest)
# instead of thousands of tiny ones. The local executor runs them one by one as usual.


rule split:
    """Seeded training subset of `budget` examples and the calibration split, per run."""
    input:
        task_dir,
    output:
        "results/runs/{task}/{model}/b{budget}/{method}/s{seed}/splits.json",
    wildcard_constraints:
        method="mm",
    params:
        calibration=config.get("calibration_size", 1000),
        calibrate_on=config.get("calibrate_on", "pool"),
    log:
        "results/logs/split/{task}/{model}/b{budget}/{method}/s{seed}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet split --task-dir {input} --budget {wildcards.budget} --seed {wildcards.seed}"
        " --calibration-size {params.calibration} --calibrate-on {params.calibrate_on} --out {output} > {log} 2>&1"


# MM's members depend on the split and the rest of the run depends on the members: an MM split inside group
# "run" would make the group depend on itself through jobs outside it, so only EE/SWEET splits join the group.
use rule split as split_grouped with:
    wildcard_constraints:
        method="ee|sweet",
    group:
        "run"


rule train:
    """Fine-tune an early-exit model (EE: exits share the backbone's gradients; SWEET: each block learns only
    from its own exit). A killed job resumes from <model>.checkpoints/ when rerun."""
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
        exits=exit_layers_arg,
        pooling=pooling_arg,
        spec=train_spec,
        meta=meta_args,
    log:
        "results/logs/train/{task}/{model}/b{budget}/{method}/s{seed}.log",
    benchmark:
        "results/benchmarks/train/{task}/{model}/b{budget}/{method}/s{seed}.tsv"
    group:
        "run"
    resources:
        gpu=GPUS,
        mem_mb=train_mem_mb,
        runtime=train_runtime,
    conda:
        "../../envs/sweet.yaml"
    threads: THREADS
    shell:
        "python -m sweet train --task-dir {input.task_dir} --splits {input.splits} --backbone {params.backbone:q}"
        " --exit-layers {params.exits} {params.pooling} --method {wildcards.method} --seed {wildcards.seed}"
        " --train-spec {params.spec:q} --out {output.model} --metrics {output.metrics}"
        " --gradient-conflict-out {output.conflict} --meta {params.meta} > {log} 2>&1"


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
        exits=exit_layers_arg,
        pooling=pooling_arg,
        spec=train_spec,
    log:
        "results/logs/train_member/{task}/{model}/b{budget}/{method}/s{seed}/member_{k}.log",
    benchmark:
        "results/benchmarks/train_member/{task}/{model}/b{budget}/{method}/s{seed}/member_{k}.tsv"
    resources:
        gpu=GPUS,
        mem_mb=train_mem_mb,
        runtime=train_runtime,
    conda:
        "../../envs/sweet.yaml"
    threads: THREADS
    shell:
        "python -m sweet train --task-dir {input.task_dir} --splits {input.splits} --backbone {params.backbone:q}"
        " --exit-layers {params.exits} {params.pooling} --method mm --member {wildcards.k} --seed {wildcards.seed}"
        " --train-spec {params.spec:q} --out {output.model} --metrics {output.metrics} > {log} 2>&1"


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
    group:
        "run"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet combine --members {input} --out {output} > {log} 2>&1"


rule calibrate:
    """Per-exit temperature scaling on the run's calibration split."""
    input:
        model=model_inputs,
        task_dir=task_dir,
        splits="results/runs/{task}/{model}/b{budget}/{method}/s{seed}/splits.json",
    output:
        "results/runs/{task}/{model}/b{budget}/{method}/s{seed}/temperatures.json",
    params:
        model=model_dir,
        batch=EVAL_BATCH,
    log:
        "results/logs/calibrate/{task}/{model}/b{budget}/{method}/s{seed}.log",
    benchmark:
        "results/benchmarks/calibrate/{task}/{model}/b{budget}/{method}/s{seed}.tsv"
    group:
        "run"
    resources:
        gpu=GPUS,
        mem_mb=eval_mem_mb,
        runtime=eval_runtime,
    conda:
        "../../envs/sweet.yaml"
    threads: THREADS
    shell:
        "python -m sweet calibrate --model {params.model} --task-dir {input.task_dir} --splits {input.splits}"
        " --batch-size {params.batch} --out {output} > {log} 2>&1"
