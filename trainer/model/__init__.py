"""The U-Net, its losses and its metrics."""
