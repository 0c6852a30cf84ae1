"""The Kaggle Carvana dataset: layout reader, RLE, synthetic sample, TFRecord conversion, tf.data."""
