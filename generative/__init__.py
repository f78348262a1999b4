"""SPP on a generative model: the paper's VAE experiment (Sec. 4.2.4, Fig. 5).

* :mod:`generative.vae`: the conv VAE with per-task latent heads, its loss, the label-free SPP
  importance (decoder pixel entropy) and the training/evaluation primitives.
* :mod:`generative.data`: CelebA, anime faces (ImageFolder), Fashion-MNIST and scikit-learn digits.
* :mod:`generative.fid`: Fréchet distances with pytorch-fid's Inception (offline weights) or a
  labelled fallback feature extractor.
* :mod:`generative.vae_sequence`: the command line ``python -m generative.vae_sequence``.

The SPP math comes from :mod:`avalanche_spp.importance` (plain PyTorch, no Avalanche).
"""
