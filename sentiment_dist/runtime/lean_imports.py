"""Keras without the optional libraries it imports and this project never uses through it.

Keras 3, when imported, imports scikit-learn (for its `keras.wrappers.SKLearn*`
estimators), matplotlib.pyplot (for `keras.visualization`'s galleries) and
pandas (to accept DataFrames in `fit`) if they are installed, and TensorFlow's
legacy `tf.python.keras` imports SciPy (for sparse inputs). They are installed:
the TF-IDF baseline needs scikit-learn, the run dir's plots matplotlib, the
file readers pandas. That is about 1.8 s of CPU (4.7 s to import TensorFlow and
Keras, 2.9 s without them; measured on 2 cores) in every process: every rank of every job, every
`predict`, every sweep trial, most of them never touching any of the four.

The finder below answers "not installed" to those imports, and only when they
come from those Keras modules. Keras then leaves out the features built on
them (each optional, behind a `try: import`); everything else, this project's
own imports of the same libraries included, gets them as usual.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder

# The Keras modules (by name prefix) that import a library only to offer a feature built on it.
_OPTIONAL_IN_KERAS = {
    "sklearn": "keras.src.wrappers.",
    "matplotlib": "keras.src.visualization.",
    "pandas": "keras.src.trainers.data_adapters.array_slicing",
    "scipy": "tensorflow.python.keras.engine.",
}
_IMPORT_MACHINERY = ("importlib._bootstrap", "importlib._bootstrap_external", "_frozen_importlib",
                     "_frozen_importlib_external", __name__)


class _SkipKerasOptionalImports(MetaPathFinder):
    def find_spec(self, name, path, target=None):
        library = name.partition(".")[0]
        if library not in _OPTIONAL_IN_KERAS:
            return None
        frame = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__") in _IMPORT_MACHINERY:
            frame = frame.f_back
        importer = str(frame.f_globals.get("__name__")) if frame is not None else ""
        if importer.startswith(_OPTIONAL_IN_KERAS[library]):
            raise ModuleNotFoundError(f"{library} is not imported by {importer} under sentiment_dist", name=name)
        return None


def install() -> None:
    """Once per process, before the first import of Keras or TensorFlow."""
    if not any(isinstance(finder, _SkipKerasOptionalImports) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SkipKerasOptionalImports())
