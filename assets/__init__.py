"""Software-defined assets, one module per layer. Thin: they call the libraries and record metadata."""
