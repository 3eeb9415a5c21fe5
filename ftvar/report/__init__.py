"""The presentation layer: the report (`build`: JSON, Markdown, HTML), its plots, and terminal tables that
stay readable at 80 columns.

May import: stats, store, study. Never torch.
"""
