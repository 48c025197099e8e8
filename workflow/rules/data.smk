# Per task: validated, prepared data (results/data/<task>/); per inline model: a randomly initialised backbone
# with its offline tokenizer (results/backbones/<model>/). Both are shared by every run that uses them.


rule prepare:
    """Validate a task's data and write it in the prepared form every run reads."""
    input:
        task_inputs,
    output:
        directory("results/data/{task}"),
    params:
        spec=lambda wildcards: json.dumps(config["tasks"][wildcards.task], sort_keys=True),
    log:
        "results/logs/prepare/{task}.log",
    benchmark:
        "results/benchmarks/prepare/{task}.tsv"
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet prepare --task {wildcards.task} --task-spec {params.spec:q} --out {output} > {log} 2>&1"


rule init_backbone:
    """A randomly initialised encoder from an inline config (the demo's offline model)."""
    output:
        directory("results/backbones/{model}"),
    params:
        spec=lambda wildcards: json.dumps(model_of(wildcards).backbone, sort_keys=True),
    log:
        "results/logs/init_backbone/{model}.log",
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet init-backbone --model-spec {params.spec:q} --out {output} > {log} 2>&1"
