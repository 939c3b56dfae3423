"""denoisekit-karras: an example third-party denoisekit plugin package.

It adds, through the ``denoisekit`` entry-point group (``karras = denoisekit_karras.plugin``):

* samplers ``euler`` and ``heun``: Euler / Heun steps on the probability-flow ODE
  (Karras et al. 2022), in :mod:`denoisekit_karras.sampler`;
* backbone ``tinyconv``: a small residual ConvNet with a time embedding, in
  :mod:`denoisekit_karras.backbone`;
* hook ``loss-by-sigma``: the training loss per noise-level band, in
  :mod:`denoisekit_karras.hooks`.
"""

#: 0.2.0: ported to denoisekit 0.2's sampler contract (``sample(denoiser, x_T, ...)``).
__version__ = "0.2.0"
