"""Local stand-ins for the AWS services around the project: they play AWS here, nothing ships them.

Shipped code (trainer/, serving/, lambda/) never imports this package; the ``carvana`` command's
table (trainer/cli.py, the composition root) and the tests do.
"""
