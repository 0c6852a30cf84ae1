"""The Kaggle Carvana dataset: layout reader, synthetic sample, TFRecord conversion, tf.data."""
