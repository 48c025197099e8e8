# Figures from the tables (never from a model): speed–accuracy curves with seed bands and the oracle, the
# individual exits' scores, and the gradient-conflict cosines. `snakemake figures` builds them;
# `snakemake --report results/report.html` collects them with their captions (workflow/report/).

FIGURES = "results/figures"


rule plot_figures:
    """Draw every figure of the selected grid (PNG and PDF)."""
    input:
        list(TABLE_FILES.values()),
    output:
        speed_accuracy=report(
            directory("results/figures/speed_accuracy"),
            patterns=["{name}.png"],
            caption="../report/speed_accuracy.rst",
            category="Speed–accuracy",
        ),
        individual_exits=report(
            directory("results/figures/individual_exits"),
            patterns=["{name}.png"],
            caption="../report/individual_exits.rst",
            category="Individual exits",
        ),
        gradient_conflict=report(
            directory("results/figures/gradient_conflict"),
            patterns=["{name}.png"],
            caption="../report/gradient_conflict.rst",
            category="Gradient conflict",
        ),
    log:
        "results/logs/figures.log",
    benchmark:
        "results/benchmarks/figures.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet figures --tables results/tables --out results/figures > {log} 2>&1"


rule figures:
    """Target: the figures of the selected grid."""
    input:
        rules.plot_figures.output,
