"""Scripts that turn text into token shards (the format lives in gpt2repro.data)."""
