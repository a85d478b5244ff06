"""Diffusion in latent space: the training objective, the composed model, its file format, the weight EMA."""
