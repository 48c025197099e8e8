# Tables: a grid's runs → results/<grid>/tables/ (target `tables`), with the paper's claims checked. Which grid,
# and whether from every run or from those that finished: rules/grids.smk.


rule aggregate:
    """A grid's tables and the paper's claims, from its runs (all of them; in draw mode those that finished)."""
    input:
        table_inputs,
    output:
        directory("results/{grid}/tables"),
    wildcard_constraints:
        grid=GRID_NAMES,
    params:
        spec=grid_spec_json,
        claims=json.dumps(config.get("claims") or {}, sort_keys=True),
        # methods.csv scores every method at the speedups the held-out operating points target
        targets=",".join(str(t) for t in (config.get("operating_points") or {}).get("targets", [1.5, 2, 3])),
        # the common error target (risk_control.error_offsets) is computed here, where a setting's runs meet,
        # on the threshold grid the runs' curves and risk control use
        risk=json.dumps(config.get("risk_control") or {}, sort_keys=True),
        thresholds=config.get("thresholds", 11),
        dense=config.get("dense_thresholds", 101),
        # not passed to the command: when it changes (a run finished or failed), draw mode redraws the tables
        finished=finished_runs,
    log:
        "results/logs/aggregate/{grid}.log",
    benchmark:
        "results/benchmarks/aggregate/{grid}.tsv"
    localrule: True
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet aggregate --grid-spec {params.spec:q} --claims {params.claims:q}"
        " --targets {params.targets} --risk-control {params.risk:q} --thresholds {params.thresholds}"
        " --dense {params.dense} --out {output} > {log} 2>&1"


rule tables:
    """Target: the tables of the grid named, else of the grid whose runs finished last (else the default's)."""
    input:
        f"results/{DRAWN_GRID}/tables",
