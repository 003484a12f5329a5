"""Using a trained model: decoding with a KV cache, and loading a run back from its workdir."""
