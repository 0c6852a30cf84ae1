"""A SageMaker training job, run here: the toolkit's container contract, supervision and artifacts.

``job.run_job(spec, work)`` is the entry; ``toolkit`` emulates the training toolkit (``/opt/ml``,
``hyperparameters.json``, ``SM_*``, the command line), ``supervisor`` runs the process under
SageMaker's stopping rules and scrapes its metrics, ``artifacts`` syncs checkpoints and packages
``model.tar.gz`` / ``output.tar.gz``.
"""
