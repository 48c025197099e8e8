# Evaluation: one batched pass per run stores every exit's logits (the single source of truth for every score,
# curve and table); the curves of every exit rule are then computed from the stored logits, without a model
# (cheap: on the submit host). On a cluster, calibrate and evaluate of a run go out as one job (group
# "evaluate", each asking for at most its share of the time cap, since a group asks for the sum: common.smk).


LATENCY_ON = latency_settings() is not None  # the grid being run asks for latency.csv
# The jobs of a run's "evaluate" group: each asks for at most 1/EVALUATE_GROUP_JOBS of the time cap, so the group's
# sum stays within it (common.smk: evaluate_runtime; latency_settings)
EVALUATE_GROUP_JOBS = 4 if LATENCY_ON else 2  # + latency, operating_points


rule evaluate:
    """Per-exit logits of the evaluation split, once, with the run's temperatures alongside."""
    input:
        model=model_inputs,
        task_dir=task_dir,
        temperatures=f"{CAL}/{layout.TEMPERATURES}",
    output:
        f"{CAL}/{layout.LOGITS}",
    params:
        model=model_dir,
        batch=EVAL_BATCH,
        offline=OFFLINE,
    log:
        log_pattern("evaluate", calibrated=True),
    benchmark:
        benchmark_pattern("evaluate", calibrated=True)
    group:
        "evaluate"
    resources:
        mem_mb=forward_mem_mb,
        runtime=evaluate_runtime,
        **GPU_RESOURCES,
    conda:
        "../../envs/sweet.yaml"
    threads: THREADS
    shell:
        "{params.offline} python -m sweet evaluate --model {params.model} --task-dir {input.task_dir}"
        " --temperatures {input.temperatures} --batch-size {params.batch} --out {output} > {log} 2>&1"


rule curves:
    """Speed–accuracy curves of every exit rule over the threshold grids, and each exit's own score."""
    input:
        logits=f"{CAL}/{layout.LOGITS}",
        task_dir=task_dir,
    output:
        curves=f"{CAL}/{layout.CURVES}",
        exits=f"{CAL}/{layout.EXITS}",
    params:
        meta=meta_args,
        thresholds=config.get("thresholds", 11),
        dense=config.get("dense_thresholds", 101),
    log:
        log_pattern("curves", calibrated=True),
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet curves --logits {input.logits} --task-dir {input.task_dir} --meta {params.meta}"
        " --thresholds {params.thresholds} --dense {params.dense}"
        " --out {output.curves} --exits-out {output.exits} > {log} 2>&1"


rule operating_points:
    """Held-out operating points (a threshold per target speedup chosen on the calibration split, scored on the
    evaluation split) and risk-controlled thresholds, from the two splits' stored logits (cheap: no model)."""
    input:
        calibration=f"{CAL}/{layout.CALIBRATION_LOGITS}",
        logits=f"{CAL}/{layout.LOGITS}",
        task_dir=task_dir,
    output:
        points=f"{CAL}/{layout.OPERATING_POINTS}",
        risk=f"{CAL}/{layout.RISK_CONTROL}",
    params:
        meta=meta_args,
        thresholds=config.get("thresholds", 11),
        dense=config.get("dense_thresholds", 101),
        targets=",".join(str(t) for t in (config.get("operating_points") or {}).get("targets", [1.5, 2, 3])),
        # error_offsets is the aggregation's (one target per setting), so changing it reruns no run's step
        risk=json.dumps({k: v for k, v in (config.get("risk_control") or {}).items() if k != "error_offsets"},
                        sort_keys=True),
    log:
        log_pattern("operating_points", calibrated=True),
    group:
        # with latency: on, in the run's evaluation job (the latency step reads its output, and a group may not
        # depend on a job outside it that depends on the group); else a cheap step on the submit host
        "evaluate" if LATENCY_ON else None
    resources:
        runtime=operating_points_runtime,
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet operating-points --calibration-logits {input.calibration} --logits {input.logits}"
        " --task-dir {input.task_dir} --meta {params.meta} --thresholds {params.thresholds} --dense {params.dense}"
        " --targets {params.targets} --risk-control {params.risk:q} --out {output.points}"
        " --risk-out {output.risk} > {log} 2>&1"


rule latency:
    """Opt-in (latency:): the run's compiled policies timed against its compiled full model on the job's own
    device (sweet/latency.py). Grouped with calibrate + evaluate: no submission of its own on a cluster."""
    input:
        model=latency_model_inputs,
        task_dir=task_dir,
        temperatures=f"{CAL}/{layout.TEMPERATURES}",
        points=f"{CAL}/{layout.OPERATING_POINTS}",
        risk=f"{CAL}/{layout.RISK_CONTROL}",
    output:
        f"{CAL}/{layout.LATENCY}",
    params:
        model=model_dir,
        run=lambda wildcards, output: str(Path(output[0]).parent),
        batch_sizes=lambda wildcards: " ".join(str(b) for b in (latency_settings() or {}).get("batch_sizes", [1, 32])),
        examples=lambda wildcards: (latency_settings() or {}).get("examples", 256),
        offline=OFFLINE,
    log:
        log_pattern("latency", calibrated=True),
    benchmark:
        benchmark_pattern("latency", calibrated=True)
    group:
        "evaluate"
    resources:
        mem_mb=forward_mem_mb,
        runtime=evaluate_runtime,
        **GPU_RESOURCES,
    conda:
        "../../envs/sweet.yaml"
    threads: THREADS
    shell:
        "{params.offline} python -m sweet latency --run {params.run} --model {params.model}"
        " --task-dir {input.task_dir} --batch-sizes {params.batch_sizes} --examples {params.examples}"
        " --out {output} > {log} 2>&1"
