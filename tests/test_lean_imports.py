"""Keras, imported after sentiment_dist, leaves out scikit-learn, matplotlib, pandas and SciPy
(its optional features on them are unused here), and the project still gets all four."""

from __future__ import annotations

from conftest import PYTHON, REPO, run

PROBE = """
import sys
import sentiment_dist, tensorflow, keras
from keras.src.trainers.data_adapters import array_slicing
from keras.src.wrappers import fixes
skipped = sorted(name for name in ("sklearn", "matplotlib", "pandas", "scipy") if name in sys.modules)
print("loaded with keras:", skipped, array_slicing.pandas, fixes.sklearn)
import matplotlib.pyplot, pandas, scipy.sparse, sklearn.linear_model
print("imported on their own:", sorted(name for name in ("sklearn", "matplotlib", "pandas", "scipy") if name in sys.modules))
"""


def test_keras_is_imported_without_the_libraries_only_its_unused_features_need():
    output = run([PYTHON, "-c", PROBE], cwd=REPO).stdout
    assert "loaded with keras: [] None None" in output
    assert "imported on their own: ['matplotlib', 'pandas', 'scipy', 'sklearn']" in output
