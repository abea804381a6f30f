"""ELMo's public names: the layer mixes (``--model ...#elmo|#top|#all``) and the TF Hub handle.

Kept apart from the embedders so that the registry, the CLI and both ELMo implementations
(native and TF Hub) read the same names without importing TensorFlow or each other.
"""

from __future__ import annotations

#: the mean of the token layer and the LSTM layers (TF Hub's ``elmo`` output); the default mix
OUTPUT_ELMO = "elmo"
#: the last LSTM layer
OUTPUT_TOP = "top"
#: every layer, concatenated
OUTPUT_ALL = "all"
#: the layer mixes an ELMo embedder can pool, default first
ELMO_OUTPUTS: tuple[str, ...] = (OUTPUT_ELMO, OUTPUT_TOP, OUTPUT_ALL)
#: the mix used when none is named
DEFAULT_ELMO_OUTPUT = OUTPUT_ELMO
#: TF Hub's ELMo module, which ``--model elmo`` loads
ELMO_HUB_HANDLE = "https://tfhub.dev/google/elmo/3"

__all__ = ["DEFAULT_ELMO_OUTPUT", "ELMO_HUB_HANDLE", "ELMO_OUTPUTS", "OUTPUT_ALL", "OUTPUT_ELMO", "OUTPUT_TOP"]
