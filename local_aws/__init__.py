"""Local stand-ins for the AWS services the project uses (training jobs, tuning, endpoints, API gateway).

Nothing that ships (the training entry point, the serving handlers, the Lambda) imports this package:
only the launcher, the ``carvana`` commands that imitate AWS, and the tests do.
"""
