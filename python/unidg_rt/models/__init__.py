"""Reference torch models (FLUX-exact MM-DiT, FLUX VAE, text encoders). Needs the `torch` extra."""
