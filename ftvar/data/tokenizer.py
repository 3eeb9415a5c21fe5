"""A study's tokenizer: the model's own (transformers' AutoTokenizer) or a WordPiece vocabulary learned from
the train texts, deterministically (`model.tokenizer = "train"`; a sentence pair as BERT encodes one:
`[CLS] a [SEP] b [SEP]`, token type 0 for the first text, 1 for the second)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from datasets import Dataset

from ftvar.data.load import TEXT_NAMES, not_loadable
from ftvar.study.config import ModelConfig, Study

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece_vocab(
    texts: Iterator[list[str]], vocab_size: int, normalizer: Any, pre_tokenizer: Any
) -> dict[str, int]:
    """A deterministic WordPiece vocabulary: special tokens, every character (alone and as `##c`), then the
    most frequent words, ties broken alphabetically. The library's WordPieceTrainer numbers subword tokens
    in hash-map order, so its vocabularies differ between runs on the same data (huggingface/tokenizers#1794);
    a study rebuilt from scratch must tokenize exactly as before."""
    counts: Counter[str] = Counter()
    for batch in texts:
        for text in batch:
            counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    tokens = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    ranked = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    tokens += ranked[: max(0, vocab_size - len(tokens))]
    return {token: i for i, token in enumerate(tokens)}


def train_tokenizer(texts: Iterator[list[str]], vocab_size: int) -> Any:
    """A lower-cased BERT-style WordPiece tokenizer whose vocabulary is learned from the given texts."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    vocab = wordpiece_vocab(texts, vocab_size, normalizer, pre_tokenizer)
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],  # BERT's: a pair's segments
    )


def load_tokenizer(study: Study, m: ModelConfig, train: Dataset) -> Any:
    from transformers import AutoTokenizer

    if m.tokenizer == "train":  # the vocabulary of every text column (both texts of a pair)
        columns = [c for c in TEXT_NAMES if c in train.column_names]
        batches = (train[i : i + 1000][c] for i in range(0, len(train), 1000) for c in columns)
        return train_tokenizer(batches, m.vocab_size)
    source = m.tokenizer or m.name_or_path
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise not_loadable(study, f"tokenizer {source}", exc) from None
