"""The data layer: a study's data loaded (Hub, local files, synthetic), tokenized once into an Arrow cache,
and that cache read back as arrays by the trials. Tokenizers (transformers, tokenizers), never torch.

May import: study, store.
"""
