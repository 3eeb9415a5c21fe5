"""The statistics layer: collected records (and per-example predictions) → fits, the variance decomposition,
the best configuration and its selection-corrected value, expected max, degenerate and failed runs,
per-example tables, findings and the paper comparison. `ftvar.stats.analysis.analyze` is its one entry.
Reads records and prediction sidecars only (pandas, statsmodels, scipy), never torch.

May import: study, store.
"""
