"""Train a tokenizer from raw text and save it as a Hugging Face tokenizer directory.

The tokenizer is byte-level (every UTF-8 string round-trips exactly: accents, emoji, code),
trained with HF `tokenizers` (BPE or Unigram), carries BOS/EOS/PAD and ChatML turn tokens,
and a ChatML chat template, so `transformers.AutoTokenizer` and mlx-lm load it as-is.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from smolmac.errors import UserError

BOS, EOS, PAD = "<|endoftext|>", "<|im_end|>", "<|pad|>"
IM_START = "<|im_start|>"
SPECIAL_TOKENS = [BOS, IM_START, EOS, PAD]
MIN_VOCAB = 256 + len(SPECIAL_TOKENS) + 1  # the byte alphabet, the special tokens and one merge
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = 4096,
    kind: str = "bpe",
    source: str = "corpus",
) -> Path:
    """Train a byte-level BPE/Unigram tokenizer on `texts` and save it to `out_dir`.

    Args:
        texts: the corpus, one document per item.
        out_dir: where tokenizer.json / tokenizer_config.json are written.
        vocab_size: target vocabulary size, special tokens included.
        kind: "bpe" or "unigram".
        source: name of the corpus for error messages.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    if not any(t.strip() for t in texts):
        raise UserError(f"{source}: the corpus is empty; give a file with some text to train the tokenizer on.")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < MIN_VOCAB:
        raise UserError(f"tokenizer.vocab_size: {vocab_size} is too small for a byte-level tokenizer; use at least {MIN_VOCAB}.")
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet, show_progress=False)
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet, show_progress=False, unk_token=None)
    else:
        raise UserError(f"tokenizer.type: '{kind}' is not a tokenizer type; use bpe or unigram.")
    # Numbers are split from the text before them (as GPT-4 / Llama 3 tokenizers do), so "12" is
    # the same token after a space, a newline or at the start of a reply; otherwise a fact read
    # as " 12" in pretraining is a different token when an answer starts with "12".
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    got = tok.get_vocab_size()
    # BPE stops merging when no pair repeats; a vocab far below the target means a too-small corpus.
    if got < vocab_size * 0.9:
        raise UserError(
            f"tokenizer.vocab_size: the corpus {source} supports only about {got} tokens, fewer than the "
            f"{vocab_size} asked for; lower tokenizer.vocab_size to {got // 64 * 64 or got} or add text."
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START],
        chat_template=CHATML_TEMPLATE,
        model_max_length=1_000_000,
        clean_up_tokenization_spaces=False,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir
