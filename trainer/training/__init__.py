"""Pieces of the training loop: configuration, callbacks, the loss-behaviour debugger, plots."""
