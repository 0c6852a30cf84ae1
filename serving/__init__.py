"""carvana-unet serving side: SavedModel -> TF Serving container handlers -> endpoint -> Lambda."""
