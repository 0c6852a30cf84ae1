"""carvana-unet training side: dataset -> TFRecords -> tf.data pipeline -> U-Net -> SavedModel.

Kept import-light on purpose: ``trainer.data.rle`` is vendored into the serving container, and
``carvana --help`` should not pay for importing TensorFlow.
"""
