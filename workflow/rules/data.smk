# Per task: validated, prepared data (results/data/<task>/); per model: a randomly initialised backbone with its
# offline tokenizer (inline models, results/backbones/<model>/) or a hub backbone fetched into the hub cache
# (results/backbones/<model>[@<revision>].fetched.json records the commit the configured revision resolved to). All run on the submit host (localrules):
# they are what needs the network, which compute nodes often lack.


rule prepare:
    """Validate a task's data and write it in the prepared form every run reads."""
    input:
        task_inputs,
    output:
        directory(DATA_PATTERN),
    params:
        spec=lambda wildcards: json.dumps(config["tasks"][wildcards.task], sort_keys=True),
    log:
        "results/logs/prepare/{task}.log",
    benchmark:
        "results/benchmarks/prepare/{task}.tsv"
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet prepare --task {wildcards.task} --task-spec {params.spec:q} --out {output} > {log} 2>&1"


rule init_backbone:
    """A randomly initialised encoder from an inline config (the demo's offline model)."""
    output:
        directory("results/backbones/{model}"),
    wildcard_constraints:
        model=slugs_of("inline"),
    params:
        spec=lambda wildcards: json.dumps(model_of(wildcards).backbone, sort_keys=True),
    log:
        "results/logs/init_backbone/{model}.log",
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet init-backbone --model-spec {params.spec:q} --out {output} > {log} 2>&1"


rule fetch_backbone:
    """Download a hub backbone (config, tokenizer, safetensors weights) into the hub cache, once."""
    output:
        "results/backbones/{fetch}.fetched.json",
    wildcard_constraints:
        fetch="|".join(re.escape(name) for name in FETCHED) or "(?!x)x",
    params:
        repo=lambda wildcards: FETCHED[wildcards.fetch].backbone,
        revision=lambda wildcards: FETCHED[wildcards.fetch].revision or "main",
        hub_cache=HUB_CACHE,
    log:
        "results/logs/fetch_backbone/{fetch}.log",
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet fetch --model {params.repo:q} --revision {params.revision:q} --hub-cache {params.hub_cache:q}"
        " --out {output} > {log} 2>&1"


rule fetch:
    """Target: everything the selected grid downloads (hub backbones, GLUE data), e.g. on a login node that has
    internet before submitting from one that has not."""
    input:
        [fetched_record(m) for m in hub_models()],
        [data_dir(t) for t in GRID["tasks"] if TASK_SOURCES[config["tasks"][t]["source"]].downloads],
