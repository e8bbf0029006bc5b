"""longssm: train recurrent language models on short windows, run them on unbounded context."""

__version__ = "0.1.0"
