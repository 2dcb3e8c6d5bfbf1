"""Using a trained model on new video: embed tracklets, search a gallery, export for serving.

The command lines are `psta_jax.embed`, `psta_jax.search` and `psta_jax.export`; the model
they load is `training.trained_model.TrainedModel`. Here:

- `tracklets`: a folder of tracklet sub-folders (or a prepared split) as a
  `datasets.TrackletStore`, with names and optional labels; frames for display.
- `embedder`: tracklet embeddings through the eval input and
  `training.evaluator.tracklet_features` (evaluation's code path), with a progress bar.
- `embedding_file`: the embeddings file (.npz / .parquet): one reader and writer.
- `ranking`: per-query ranked gallery (the protocol's, `evaluation.protocol_gallery`) and
  the evaluator's CMC/mAP.
- `report_page`: retrieval sheets (inspection's Figure 5), rankings.csv, index.html.
- `export_artifacts`: jax.export artifact and TensorFlow SavedModel of the embedding function.
- `errors`: ServingInputError, the one error for bad input (a runtime.errors.UserError).
"""
