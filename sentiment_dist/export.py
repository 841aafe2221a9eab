"""`sentiment-export RUN_DIR`: serving formats of a trained model.

Writes `<run dir>/export/` (or `--out`):
- `saved_model/`: a TF SavedModel whose `serving_default` signature takes raw
  strings (`text`, shape [batch]) and returns `probabilities`: TF Serving
  ready.
- with `--tflite`, `model.tflite` (float) and `model_dynamic_range.tflite`
  (weights quantized to 8 bits). TFLite has no builtin string ops, so these
  take token ids (`tokens`, shape [1, sequence_length]); `vocabulary.txt`
  beside them turns text into ids (`sentiment-predict` does this).
- `labels.json` and `vocabulary.txt`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from sentiment_dist.runtime.errors import UserError, exit_on_user_error

SAVED_MODEL = "saved_model"
TFLITE_FILES = {"float": "model.tflite", "dynamic_range": "model_dynamic_range.tflite"}


def export_run(run_dir: str, out: str, tflite: bool) -> dict[str, str]:
    import keras
    import tensorflow as tf

    from sentiment_dist.jobs.rundir import RunDir

    run = RunDir(run_dir).load_classifier()
    model = run.model

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(text):
        return {"probabilities": model(text[:, None], training=False)}

    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)  # renamed into place when complete
    try:
        module = tf.Module()
        module.model = model
        tf.saved_model.save(module, os.path.join(staging, SAVED_MODEL), signatures={"serving_default": serve})
        written = {"saved_model": os.path.join(out, SAVED_MODEL)}
        if tflite:
            classifier = run.classifier
            length = run.config.model.sequence_length  # TFLite wants a fixed shape: the vectorizer's
            tokens = keras.Input(batch_shape=(1, length), dtype="int32", name="tokens")
            converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(tokens, classifier(tokens)))
            for kind, name in TFLITE_FILES.items():
                converter.optimizations = [tf.lite.Optimize.DEFAULT] if kind == "dynamic_range" else []
                with open(os.path.join(staging, name), "wb") as handle:
                    handle.write(converter.convert())
                written[f"tflite_{kind}"] = os.path.join(out, name)
        for name in (RunDir.LABELS, RunDir.VOCABULARY):
            shutil.copy(os.path.join(run_dir, name), staging)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sentiment-export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run directory")
    parser.add_argument("--out", help="output directory (default: RUN_DIR/export)")
    parser.add_argument("--tflite", action="store_true", help="also write float and dynamic-range TFLite files")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.run_dir):
        raise UserError(f"run directory {args.run_dir} does not exist; pass the path printed by training.")
    written = export_run(args.run_dir, args.out or os.path.join(args.run_dir, "export"), args.tflite)
    for kind, path in written.items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
