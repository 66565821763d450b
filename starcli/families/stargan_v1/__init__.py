"""StarGAN v1 (Choi et al., CVPR 2018): the first model family."""
