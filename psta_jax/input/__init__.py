"""The input: frame samplers, batch plans, the tf.data pipeline and the device-side clip
preparation (`preprocess`, free of TensorFlow)."""
