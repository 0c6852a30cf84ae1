"""carvana-unet training side: dataset -> TFRecords -> tf.data pipeline -> U-Net -> SavedModel.

Kept import-light on purpose: ``trainer.wire`` is vendored into the serving container and the
Lambda (this file comes along as the package marker), and ``carvana --help`` should not pay for
importing TensorFlow.
"""
