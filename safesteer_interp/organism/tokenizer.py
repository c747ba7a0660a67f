"""A word-level ChatML tokenizer built from the world's vocabulary.

Words are whitespace-separated pieces and punctuation stays attached where the world writes it attached
("I'm", "sorry,", "that."), so decoded answers read naturally ("I'm sorry, but I can't help with that.") and the
substring refusal judge needs no special casing. Newlines are their own token, so the ChatML generation prompt
ends in five post-instruction tokens: ``<|im_end|> \\n <|im_start|> assistant \\n``.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from safesteer_interp.organism.world import vocabulary_texts

PAD, UNK, IM_START, IM_END, ENDOFTEXT = "<|pad|>", "<|unk|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIALS = (PAD, UNK, IM_START, IM_END, ENDOFTEXT)

# ChatML with an optional system turn (a later stage uses a safety-system-prompt teacher).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def vocabulary() -> list[str]:
    """Specials, the newline, then every word of the world in sorted order (so ids never depend on set order)."""
    words = sorted({w for text in vocabulary_texts() for w in text.split()})
    return [*SPECIALS, "\n", *words]


def speaks_organism(tokenizer) -> bool:
    """Whether a tokenizer holds every word of the organism's world (the organism, its students, tiny test models):
    only such a model can be evaluated on the world; a real model's vocabulary cannot hold word-level tokens."""
    return set(vocabulary()) <= set(tokenizer.get_vocab())


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The organism's tokenizer: WordLevel over the world's words, ChatML template, distinct pad and EOS."""
    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Split on spaces only: a generic whitespace split would swallow the newline tokens of the template.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", "isolated"),
                                                 pre_tokenizers.Split(Regex(" +"), "removed")])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, eos_token=IM_END,
                                   additional_special_tokens=[IM_START, ENDOFTEXT])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast
