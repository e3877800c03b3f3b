"""Engines: how a shard of images reaches the predictors. `local` (threads in this process) and `ray` (Ray Data);
`shards` keeps finished shards for resume, `reference_cache` keeps native Paddle's logits for reuse."""
