"""starcli: StarGAN-style multi-domain face translation from the shell."""

__version__ = "0.1.0"
