"""gptui.core: the model, tokenizer, checkpoints, generation and inference backends."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gptui")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
