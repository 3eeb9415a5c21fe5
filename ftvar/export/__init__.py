"""Exports of a study's records to the tools researchers already use: TensorBoard (`to_tensorboard`) and
MLflow (`to_mlflow`), after the fact and from one process. Reads records only (no torch)."""
