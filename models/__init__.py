"""Models: resolving --model to a local checkpoint, loading it offline, and the locally built tiny GPT-OSS."""
