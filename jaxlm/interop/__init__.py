"""Interoperability: Hugging Face model files in and out."""
