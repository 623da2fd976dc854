"""gpt2repro: reproduce GPT-2 from scratch."""

__version__ = "0.1.0"
