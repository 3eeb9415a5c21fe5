"""The statistics layer: collected records → fits, the variance decomposition, the best configuration,
expected max, degenerate trials, findings and the paper comparison. `ftvar.stats.analysis.analyze` is its one
entry. Reads records only (pandas, statsmodels, scipy), never torch.

May import: study, store.
"""
