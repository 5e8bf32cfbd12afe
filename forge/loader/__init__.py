"""Loading GGUF models: reader, architecture tables, config."""
