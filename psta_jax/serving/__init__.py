"""Using a trained model on new video: embed tracklets, search a gallery, export for serving.

The command lines are thin modules: `python -m psta_jax.embed`, `python -m psta_jax.search`,
`python -m psta_jax.export`. Here:

- `tracklets`: a folder of tracklet sub-folders (or a prepared TFDS split) as the input
  pipeline's TrackletStore, with names and optional labels; frames for display.
- `trained_model`: a checkpoint (found and restored by `checkpointing`) with its config as an
  eval-mode model, its identity (config hash, step), and its uint8-clips embedding function.
- `embedder`: tracklet embeddings through the eval pipeline and
  `evaluation.features.tracklet_features` (the evaluator's code path), with a progress bar.
- `embedding_file`: the embeddings file (.npz / .parquet): one reader and writer.
- `ranking`: per-query ranked gallery and the evaluator's CMC/mAP.
- `report_page`: retrieval sheets (inspection's Figure 5), rankings.csv, index.html.
- `export_artifacts`: jax.export artifact and TensorFlow SavedModel of the embedding function.
- `errors`: ServingInputError, the one error for bad input (a psta_jax.errors.UserError).
"""
