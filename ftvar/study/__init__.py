"""The study layer: what a study is — its TOML file and validation, axes, designs, trials and their ids, the
study hash, the built-in studies and the synthetic data set. Pure Python (numpy and scipy for designs).

May import: nothing of ftvar but `ftvar.errors`. Every other layer builds on this one.
"""
