"""sentiment-dist: distributed LSTM sentiment classifiers with transfer learning."""

__version__ = "0.1.0"

import os as _os

# TensorFlow's C++ start-up chatter (CUDA probing, CPU features) buries the
# progress; real errors still print. Set TF_CPP_MIN_LOG_LEVEL=0 to see it all.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Keras imports scikit-learn, matplotlib and pandas for features this project does not use
# through it: skipping them saves about 1.8 s of CPU in every process (runtime/lean_imports.py).
from sentiment_dist.runtime import lean_imports as _lean_imports  # noqa: E402

_lean_imports.install()
