"""StarGAN v2 (Choi et al., CVPR 2020): diverse image synthesis for multiple domains."""
