"""Reporting: from finished runs to a grid's tables, claims, figures and report.

The modules follow the data flow, and each imports only the ones before it (tests/test_reporting.py checks):

    runs        which runs a grid names, which finished, why the others did not (stdlib only: the Snakefile
                imports it while planning)
    collect     the per-run CSVs of a set of runs, concatenated into tidy frames
    statistics  Pareto fronts, scores at fixed speedups, AUC, seed-paired differences with Student-t intervals
    claims      the paper's claims, each checked per task × model × budget and pooled over tasks
    tables      every file of results/<grid>/tables/ (one registry), Markdown and LaTeX forms
    figures     every figure of results/<grid>/figures/, with a caption written from the same data
    report      results/<grid>/report.html: the grid, what ran, the claims, then the figures and tables
    cli         `python -m sweet aggregate | figures | report`

Adding a table is one entry in ``tables.TABLES``; adding a claim is one entry in ``claims.CLAIMS``.
"""
