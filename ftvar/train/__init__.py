"""Training: the only part of ftvar that imports torch, transformers and datasets.

Import its modules lazily (inside a job or a command), never at the top of a module the collector uses:
`ftvar.train.data` builds the tokenized cache (datasets, tokenizers), `ftvar.train.runner` runs a trial
(torch, and transformers for the model class only), `ftvar.train.cache` reads the cache (pyarrow, numpy).
"""
