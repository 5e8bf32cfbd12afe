"""Test helpers shipped with forge: synthetic GGUF models of real architectures' shapes.

`forge.testing.synthetic.write_synthetic(path, "tiny-llama", "Q4_K_M")` writes a loadable GGUF with
random, valid weights; `python -m forge.testing.synthetic --help` is the command-line form.
"""
