# Aggregation: the per-run CSVs of the selected grid → tidy tables under results/tables/ (the contracted
# curves.csv and individual_exits.csv, the gradient-conflict log, and the paper's summaries).

TABLES = "results/tables"
# Everything `python -m sweet aggregate` writes (sweet/aggregate.py: SUMMARY_FILES plus the Markdown/LaTeX forms
# and the list of runs that had no results).
TABLE_FILES = {
    "curves": "results/tables/curves.csv",
    "individual_exits": "results/tables/individual_exits.csv",
    "gradient_conflict": "results/tables/gradient_conflict.csv",
    "individual_exits_summary": "results/tables/individual_exits_summary.csv",
    "speedup_summary": "results/tables/speedup_summary.csv",
    "auc_summary": "results/tables/auc_summary.csv",
    "oracle_summary": "results/tables/oracle_summary.csv",
    "pairwise_summary": "results/tables/pairwise_summary.csv",
    "gradient_conflict_summary": "results/tables/gradient_conflict_summary.csv",
    "gradient_conflict_by_step": "results/tables/gradient_conflict_by_step.csv",
    "individual_exits_md": "results/tables/individual_exits_summary.md",
    "individual_exits_tex": "results/tables/individual_exits_summary.tex",
    "missing_runs": "results/tables/missing_runs.txt",
}
IN_REPORT = ("individual_exits_summary", "speedup_summary", "auc_summary", "pairwise_summary")


rule aggregate:
    """Concatenate the runs' CSVs and compute the per-exit, fixed-speedup and area-under-curve summaries."""
    input:
        curves=run_files("curves.csv"),
        exits=run_files("individual_exits.csv"),
        conflict=run_files("gradient_conflict.csv", methods=("ee", "sweet")),
    output:
        **{k: v for k, v in TABLE_FILES.items() if k not in IN_REPORT},
        **{
            k: report(TABLE_FILES[k], caption="../report/tables.rst", category="Tables")
            for k in IN_REPORT
        },
    params:
        runs=run_dirs(),
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../../envs/sweet.yaml"
    threads: 1
    shell:
        "python -m sweet aggregate --runs {params.runs} --out results/tables > {log} 2>&1"


rule tables:
    """Target: the tables of the selected grid."""
    input:
        list(TABLE_FILES.values()),
