"""Serving a trained GPT over HTTP: an OpenAI-compatible API with continuous batching."""
