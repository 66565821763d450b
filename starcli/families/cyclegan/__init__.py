"""CycleGAN (Zhu et al., ICCV 2017): two generators and two PatchGAN discriminators."""
