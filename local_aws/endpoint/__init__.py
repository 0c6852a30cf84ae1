"""The local SageMaker endpoint (``carvana serve``): the TF Serving container, TF Serving's REST API
and SageMaker Runtime's InvokeEndpoint, re-implemented for one SavedModel; ``process`` starts it."""
