# Figures and report of a grid, from its tables (never from a model): results/<grid>/figures/ (target `figures`)
# and results/<grid>/report.html (target `report`): the grid, what ran, the paper's claims, then the figures with
# the captions written with them.


rule plot_figures:
    """Draw every figure of a grid's tables (PNG and PDF), each with its caption (figures/index.json)."""
    input:
        "results/{grid}/tables",
    output:
        directory("results/{grid}/figures"),
    wildcard_constraints:
        grid=GRID_NAMES,
    params:
        rule=(config.get("claims") or {}).get("exit_rule", "confidence"),
    log:
        "results/logs/figures/{grid}.log",
    benchmark:
        "results/benchmarks/figures/{grid}.tsv"
    localrule: True
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet figures --tables {input} --strategy {params.rule} --out {output} > {log} 2>&1"


rule write_report:
    """One HTML file per grid: first page (grid, what ran, claims, partial-grid notice), then figures and tables."""
    input:
        tables="results/{grid}/tables",
        figures="results/{grid}/figures",
    output:
        "results/{grid}/report.html",
    wildcard_constraints:
        grid=GRID_NAMES,
    log:
        "results/logs/report/{grid}.log",
    localrule: True
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet report --tables {input.tables} --figures {input.figures} --out {output} > {log} 2>&1"


rule figures:
    """Target: the figures of the grid named, else of the grid whose runs finished last (else the default's)."""
    input:
        f"results/{DRAWN_GRID}/figures",


rule report:
    """Target: the report of the grid named, else of the grid whose runs finished last (else the default's)."""
    localrule: True
    input:
        f"results/{DRAWN_GRID}/report.html",
