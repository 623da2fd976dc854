"""Scripts that turn text into token shards (fineweb, shakespeare, hellaswag) and the shard
writer they share (`data_prep.shards`); the shard format itself lives in gpt2repro.data."""
